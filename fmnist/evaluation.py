"""One split's evaluation: loss, accuracy, confusion matrix, misclassified images, and per-class
precision and recall. The metric names and directions are in `fmnist.metrics` (no torch there)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fmnist import CLASSES
from fmnist.tta import tta_logits


class Evaluation:
    """Sums over one split's batches: loss, confusion matrix, a few misclassified images and,
    when asked, every probability. `evaluate` feeds it one model's logits; a fused group
    (fmnist/sweeps/fused/) feeds one per member from a single pass."""

    def __init__(
        self,
        keep_wrong: int = 32,
        tta: bool = False,
        keep_outputs: bool = False,
        translate: int = 0,
    ):
        self.keep_wrong, self.tta, self.keep_outputs = keep_wrong, tta, keep_outputs
        self.translate = translate if tta else 0
        self.loss_sum: torch.Tensor | None = None
        self.confusion: torch.Tensor | None = None
        self.wrong_x: list[torch.Tensor] = []
        self.wrong_p: list[torch.Tensor] = []
        self.wrong_y: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.n = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        classes = logits.shape[1]
        if self.confusion is None:
            self.confusion = torch.zeros(classes * classes, dtype=torch.long, device=y.device)
            self.loss_sum = torch.zeros((), device=y.device)
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pred = logits.argmax(1)
        self.confusion += torch.bincount(y * classes + pred, minlength=classes * classes)
        self.n += len(y)
        if self.keep_outputs:
            self.probs.append(logits.softmax(1).cpu())
            self.labels.append(y.cpu())
        if sum(len(w) for w in self.wrong_p) < self.keep_wrong:
            miss = pred != y
            self.wrong_x.append(x[miss][: self.keep_wrong].float().cpu())
            self.wrong_p.append(pred[miss][: self.keep_wrong].cpu())
            self.wrong_y.append(y[miss][: self.keep_wrong].cpu())

    def result(self) -> dict[str, Any]:
        assert self.confusion is not None and self.loss_sum is not None, "empty loader"
        k, keep, n = int(self.confusion.numel() ** 0.5), self.keep_wrong, self.n
        matrix = self.confusion.view(k, k).cpu()
        correct = int(matrix.trace())
        out = {
            "loss": self.loss_sum.item() / n,
            "accuracy": correct / n,
            "num_correct": correct,
            "num_samples": n,
            "confusion": matrix.tolist(),
            "tta": self.tta,
            "tta_translate": self.translate,
            "wrong_images": _cat(self.wrong_x, keep, torch.zeros(0, 1, 28, 28)),
            "wrong_preds": _cat(self.wrong_p, keep, torch.zeros(0, dtype=torch.long)),
            "wrong_targets": _cat(self.wrong_y, keep, torch.zeros(0, dtype=torch.long)),
        }
        if self.keep_outputs:
            out["probs"], out["labels"] = torch.cat(self.probs), torch.cat(self.labels)
        return out


def batches(loader: Any, limit: int | None = None) -> Any:
    """An evaluation pass over `loader`, cut to `limit` batches when given."""
    for i, batch in enumerate(loader.epoch(0)):
        if limit and i >= limit:
            break
        yield batch


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    loader: Any,
    limit: int | None = None,
    keep_wrong: int = 32,
    tta: bool = False,
    keep_outputs: bool = False,
    translate: int = 0,
) -> dict[str, Any]:
    """Mean loss, accuracy, confusion matrix and a few misclassified images of one split.

    `tta`: the mean of the logits of each image and its mirror image (test-time augmentation);
    `translate`: with `tta`, also their copies shifted by that many pixels (fmnist/tta.py).
    `keep_outputs`: also return every probability and label (PR curves, figures).
    """
    was_training = model.training
    model.eval()
    sums = Evaluation(keep_wrong, tta, keep_outputs, translate)
    for x, y in batches(loader, limit):
        sums.add(x, y, tta_logits(lambda v: model(v).float(), x, tta, translate))
    model.train(was_training)
    return sums.result()


def _cat(parts: list[torch.Tensor], keep: int, empty: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts)[:keep] if parts else empty


def per_class(confusion: list[list[int]], classes: tuple[str, ...] = CLASSES) -> list[dict]:
    """Precision, recall (the accuracy on that class) and F1 from a true x predicted matrix."""
    m = torch.tensor(confusion, dtype=torch.float64)
    tp, predicted, actual = m.diag(), m.sum(0), m.sum(1)
    rows = []
    for i, name in enumerate(classes):
        precision = (tp[i] / predicted[i]).item() if predicted[i] else 0.0
        recall = (tp[i] / actual[i]).item() if actual[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": int(actual[i]),
            }
        )
    return rows
