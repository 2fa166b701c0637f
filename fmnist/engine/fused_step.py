"""The compute step of a fused group: K runs' steps and evaluations computed as one fused model
(fmnist/engine/fused_model.py). Each run keeps its own parameters, optimizer, schedule and
batches; only the arithmetic is shared. On CUDA the fused step replays as one CUDA graph where
every member's would (`runtime.cuda_graphs`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fmnist.engine.fused_model import FusedModel, stack_inputs
from fmnist.engine.graphs import GraphedStep
from fmnist.engine.state import RunState
from fmnist.engine.step import Batch, autocast
from fmnist.evaluation import Evaluation, batches
from fmnist.tta import tta_logits


class FusedStep:
    """One forward and backward pass for every run of the group; each run's loss is its own
    (the gradient of the sum reaches each run's parameters from its own loss only)."""

    def __init__(self, runs: list[RunState]):
        self.runs: list[RunState] = []
        self.keep(runs)

    def keep(self, runs: list[RunState]) -> list[RunState]:
        if [id(r) for r in runs] == [id(r) for r in self.runs]:
            return runs
        self.runs = list(runs)
        if not runs:
            return runs
        first = runs[0]
        self.channels_last = bool(first.cfg.runtime.channels_last)
        self.model = FusedModel([r.model for r in runs])
        self.eval_model = FusedModel([r.eval_model for r in runs])
        smoothing = [float(r.cfg.label_smoothing) for r in runs]
        self.smoothing = smoothing[0] if len(set(smoothing)) == 1 else smoothing
        self.clips = [r.cfg.grad_clip for r in runs]  # read once, not each step
        # every run's sums are views into one tensor: one add per step, one finiteness check
        self.loss = torch.stack([r.running_loss for r in runs])
        self.correct = torch.stack([r.running_correct for r in runs])
        for i, r in enumerate(runs):
            r.running_loss, r.running_correct = self.loss[i], self.correct[i]
        self.fn = self.step
        if all(r.graphs for r in runs):
            models, optimizers = [r.model for r in runs], [r.optimizer for r in runs]
            sums, rows = (self.loss, self.correct), int(first.cfg.batch_size)
            self.fn = GraphedStep(self.step, models, optimizers, sums, rows)
        return runs

    def train(self, batch: list[Batch]) -> None:
        self.fn([b[0] for b in batch], [b[1] for b in batch])

    def step(self, images: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
        """forward, each member's loss, backward, (clip), each member's optimizer step."""
        runs = self.runs
        x, y = stack_inputs(images, self.channels_last), torch.stack(labels, 1)  # y: [N, K]
        with autocast(runs[0]):
            logits = self.model(x)  # [N, K, classes]
        logits = logits.float()
        if isinstance(self.smoothing, float):
            per = F.cross_entropy(
                logits.permute(0, 2, 1), y, reduction="none", label_smoothing=self.smoothing
            ).mean(0)
        else:
            per = torch.stack(
                [
                    F.cross_entropy(logits[:, k], y[:, k], label_smoothing=s)
                    for k, s in enumerate(self.smoothing)
                ]
            )
        for r in runs:
            r.optimizer.zero_grad(set_to_none=True)
        per.sum().backward()  # each member's parameters get the gradient of its own loss
        for r, clip in zip(runs, self.clips, strict=True):
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(r.model.parameters(), clip)
            r.optimizer.step()
        self.loss.add_(per.detach() * len(y))
        self.correct.add_((logits.argmax(2) == y).sum(0))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss).all())

    @torch.inference_mode()
    def evaluate(self, loader: Any, limit: int | None, keep: list[bool], wrong: int) -> list[dict]:
        cfg = self.runs[0].cfg
        tta, translate = bool(cfg.tta), cfg.tta_translate
        sums = [Evaluation(wrong if k else 0, tta, k, translate) for k in keep]
        model, k = self.eval_model, len(self.runs)
        was_training = model.members[0].training
        model.train(False)
        for batch, labels in batches(loader, limit):
            # 1/k of the batch at a time: k members' activations stay the size of one member's
            # (measured: 16 bn_cnn evaluate 1000 images in 2.1 s so, 4.6 s whole, 2.8 s apart)
            size = max(1, len(batch) // k)
            for x, y in zip(batch.split(size), labels.split(size), strict=True):
                xs = stack_inputs([x] * k, self.channels_last)
                logits = tta_logits(lambda v: model(v).float(), xs, tta, translate)
                for i, s in enumerate(sums):
                    s.add(x, y, logits[:, i])
        model.train(was_training)
        return [s.result() for s in sums]
