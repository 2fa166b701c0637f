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
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start
    )
