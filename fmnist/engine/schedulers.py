"""Per-batch learning-rate schedules; the loop passes `total_steps` (epochs x batches)."""

from __future__ import annotations

import math

import torch


def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} is invalid: an integer >= 0")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def onecycle(
    optimizer: torch.optim.Optimizer, total_steps: int, max_lr: float, pct_start: float = 0.25
) -> torch.optim.lr_scheduler.OneCycleLR:
    scaled = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=scaled, total_steps=total_steps, pct_start=pct_start
    )


def triangle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    start: float = 0.2,
    peak_at: float = 0.25,
    end: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear from `start` x lr up to lr at `peak_at` of the run, then linear down to `end` x lr
    (airbench's schedule: a short warm-up and a long linear decay)."""
    for key, value, ok in (
        ("start", start, 0 <= start <= 1),
        ("peak_at", peak_at, 0 <= peak_at < 1),
        ("end", end, 0 <= end <= 1),
    ):
        if not ok:
            raise ValueError(f"scheduler.{key}={value} is invalid: a fraction in [0, 1]")
    peak = peak_at * total_steps

    def factor(step: int) -> float:
        if step < peak:
            return start + (1 - start) * step / peak
        return 1 + (end - 1) * min(1.0, (step - peak) / max(1.0, total_steps - peak))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
