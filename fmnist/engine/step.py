"""One training step, built once per run: eager, in bf16 autocast, or replayed as a CUDA graph.

The variant is chosen here so the loop only ever calls `step(images, labels)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from fmnist.engine.graphs import GraphedStep
from fmnist.state import RunState

Step = Callable[[torch.Tensor, torch.Tensor], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training cannot recover, so the run fails."""


def make_step(run: RunState) -> Step:
    """forward, loss, backward, (clip), optimizer step, and the epoch's sums kept on the device."""
    cfg, optimizer = run.cfg, run.optimizer
    model = torch.compile(run.model) if cfg.runtime.compile else run.model
    smoothing, clip = cfg.label_smoothing, cfg.grad_clip
    params = [p for p in run.model.parameters() if p.requires_grad]
    loss_sum, correct = run.running_loss, run.running_correct

    def autocast():  # noqa: ANN202  (the weight-cast cache would hold tensors outside a graph)
        if not run.bf16:
            return nullcontext()
        return torch.autocast(run.device.type, torch.bfloat16, cache_enabled=not run.graphs)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        loss_sum.add_(loss.detach() * len(labels))  # per sample: exact for a short last batch
        correct.add_((logits.argmax(1) == labels).sum())

    if run.graphs:
        return GraphedStep(step, run.model, optimizer, (loss_sum, correct))
    return step


def check_finite(run: RunState, where: str) -> None:
    if not torch.isfinite(run.running_loss):
        raise NonFiniteLossError(
            f"loss became {run.running_loss.item()} {where} (lr={run.cfg.lr}): lower the learning rate"
        )
