"""A whole training step as one CUDA graph: forward, backward, optimizer step and epoch sums.

The article's network is too small to keep a GPU busy: at batch 100 an eager step spends its
time launching ~60 tiny kernels from Python (measured ~2 ms a step on an H200). Replaying a
captured graph launches them all at once. Limits: fixed shapes (a shorter last batch runs
eagerly), a constant learning rate (a float lr is baked into the graph), no torch.compile.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from fmnist.errors import ConfigError


def _has_capturable_flag(optimizer_class: type) -> bool:
    """Adam, AdamW, RMSprop...: a flag that keeps their step count on the GPU."""
    return "capturable" in inspect.signature(optimizer_class).parameters


def capturable(optimizer_class: type) -> bool:
    """SGD keeps no step count; the others need the flag."""
    return issubclass(optimizer_class, torch.optim.SGD) or _has_capturable_flag(optimizer_class)


def optimizer_options(cfg: DictConfig, graphs: bool) -> dict[str, Any]:
    """Extra constructor arguments: `capturable=True` where a graph will replay the step."""
    takes = _has_capturable_flag(get_class(cfg.optimizer._target_))
    return {"capturable": True} if graphs and takes else {}


def want_graphs(cfg: DictConfig, device: torch.device) -> bool:
    """runtime.cuda_graphs: null = on where it is safe (CUDA, constant lr, no compile)."""
    asked = cfg.runtime.cuda_graphs
    optimizer = cfg.optimizer._target_
    blockers = [
        reason
        for reason, present in (
            ("a CUDA device", device.type != "cuda"),
            ("a constant learning rate (scheduler=none)", bool(cfg.scheduler)),
            ("runtime.compile=false", cfg.runtime.compile),
            ("no gradient clipping (grad_clip=null)", cfg.grad_clip is not None),
            (
                f"an optimizer that supports capture ({optimizer} does not)",
                not capturable(get_class(optimizer)),
            ),
        )
        if present
    ]
    if asked and blockers:
        raise ConfigError(f"runtime.cuda_graphs=true needs {' and '.join(blockers)}")
    return asked is not False and not blockers


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, keeping this run's `capturable` flags (whether a
    graph replays the step depends on this run's device, not the one the checkpoint came from)
    and weight decays (scaled to this run's epochs by `weight_decay_epochs`: a run trained
    further decays each step less)."""
    kept = [
        {k: group[k] for k in ("capturable", "weight_decay") if group.get(k) is not None}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, kept, strict=True):
        group.update(own)


class GraphedStep:
    """Calls `step(*inputs)` through a CUDA graph captured on the first full batch. One graph
    replays the step of one run or of a fused group (`models` and `optimizers`: every run's).

    Capture needs a few warm-up steps (lazy optimizer state, cuDNN and cuBLAS set-up); their
    effect on weights, buffers, optimizer state and sums is undone, so no batch is trained twice.
    """

    def __init__(
        self,
        step: Callable[..., None],
        models: list[torch.nn.Module],
        optimizers: list[torch.optim.Optimizer],
        sums: tuple[torch.Tensor, ...],
        rows: int,
        warmup: int = 3,
    ):
        """`rows`: a full batch's size; a graph is captured on a full batch only."""
        self.step, self.models, self.optimizers, self.sums = step, models, optimizers, sums
        self.rows, self.warmup = rows, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[Any] = []

    def __call__(self, *inputs: Any) -> None:
        if self.graph is None:
            if _flat(inputs)[0].shape[0] != self.rows:
                self.step(*inputs)  # a short batch first (a group rebuilt late in an epoch)
                return
            self._capture(inputs)
        if _shapes(inputs) != _shapes(self.inputs):
            self.step(*inputs)  # the shorter last batch
            return
        for static, given in zip(_flat(self.inputs), _flat(inputs), strict=True):
            static.copy_(given)
        self.graph.replay()

    def _capture(self, inputs: tuple[Any, ...]) -> None:
        self.inputs = [_clone(x) for x in inputs]
        tensors = [t for m in self.models for t in m.state_dict(keep_vars=True).values()]
        tensors += list(self.sums)
        saved = [t.detach().clone() for t in tensors]
        states = [s for o in self.optimizers for s in o.state.items()]
        optim_saved = {
            p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in states
        }
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warm-up in place: the graph keeps these addresses
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
            for optimizer in self.optimizers:
                for p, state in optimizer.state.items():
                    for k, v in state.items():
                        if not torch.is_tensor(v):
                            continue
                        if k in optim_saved.get(p, {}):
                            v.copy_(optim_saved[p][k])
                        else:  # state the warm-up created: as if never stepped
                            v.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step(*self.inputs)


def _flat(inputs: Any) -> list[torch.Tensor]:
    """The tensors of a step's inputs: tensors, or lists of them (a fused group's batches)."""
    out: list[torch.Tensor] = []
    for x in inputs:
        out += _flat(x) if isinstance(x, list | tuple) else [x]
    return out


def _shapes(inputs: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _flat(inputs)]


def _clone(x: Any) -> Any:
    return [_clone(v) for v in x] if isinstance(x, list | tuple) else x.clone()
