"""The compute step of `fit`: the arithmetic of a training step and of an evaluation pass, for
one run (eager, in bf16 autocast, or replayed as a CUDA graph) or for several runs computed as
one fused model (fmnist/engine/fused_step.py). The loop only calls the methods of `ComputeStep`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from fmnist.engine.graphs import GraphedStep
from fmnist.engine.state import RunState
from fmnist.errors import NonFiniteLossError
from fmnist.evaluation import evaluate

Batch = tuple[torch.Tensor, torch.Tensor]


class ComputeStep(Protocol):
    def keep(self, runs: list[RunState]) -> list[RunState]:
        """Compute for these runs only from now on (the others failed or stopped); returns them."""

    def train(self, batch: list[Batch]) -> None:
        """One optimizer step of each run on its own batch; adds into each run's running sums."""

    def finite(self) -> bool:
        """Whether every run's running loss is finite (one look, one sync)."""

    def evaluate(self, loader: Any, limit: int | None, keep: list[bool], wrong: int) -> list[dict]:
        """One evaluation result per run (`fmnist.evaluation.Evaluation.result`)."""


def autocast(run: RunState) -> Any:
    """bf16 autocast where the run decided on it; the weight-cast cache would hold tensors
    outside a CUDA graph, so it is off there."""
    if not run.bf16:
        return nullcontext()
    return torch.autocast(run.device.type, torch.bfloat16, cache_enabled=not run.graphs)


class SingleStep:
    """forward, loss, backward, (clip), optimizer step, and the epoch's sums kept on the device."""

    def __init__(self, run: RunState):
        self.run = run
        cfg = run.cfg
        self.model = torch.compile(run.model) if cfg.runtime.compile else run.model
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        # read once: a DictConfig lookup costs microseconds, and a step reads them each batch
        self.smoothing, self.clip = float(cfg.label_smoothing), cfg.grad_clip
        self.fn = self.step
        if run.graphs:
            sums = (run.running_loss, run.running_correct)
            rows = int(cfg.batch_size)
            self.fn = GraphedStep(self.step, [run.model], [run.optimizer], sums, rows)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        run = self.run
        with autocast(run):
            logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        run.optimizer.step()
        run.running_loss.add_(loss.detach() * len(labels))  # per sample: exact for a short batch
        run.running_correct.add_((logits.argmax(1) == labels).sum())

    def keep(self, runs: list[RunState]) -> list[RunState]:
        return runs

    def train(self, batch: list[Batch]) -> None:
        self.fn(*batch[0])

    def finite(self) -> bool:
        return bool(torch.isfinite(self.run.running_loss))

    def evaluate(self, loader: Any, limit: int | None, keep: list[bool], wrong: int) -> list[dict]:
        cfg = self.run.cfg
        kept = keep[0]
        return [
            evaluate(
                self.run.eval_model,
                loader,
                limit,
                wrong if kept else 0,
                tta=cfg.tta,
                keep_outputs=kept,
                translate=cfg.tta_translate,
            )
        ]


def check_finite(run: RunState, where: str) -> None:
    if not torch.isfinite(run.running_loss):
        raise NonFiniteLossError(
            f"loss became {run.running_loss.item()} {where} (lr={run.cfg.lr}): lower the learning rate"
        )
