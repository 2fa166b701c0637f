"""Matplotlib figures shared by TensorBoard, evaluate and compare (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fmnist import CLASSES  # noqa: E402


def confusion_figure(matrix: list[list[int]], title: str = "Confusion matrix (test)") -> Figure:
    """Counts in every cell, rows true classes, columns predictions; the diagonal is correct."""
    counts = torch.tensor(matrix, dtype=torch.float32)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=80)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(10), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = counts.max().item() / 2
    for i in range(10):
        for j in range(10):
            value = int(counts[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > high else "black")  # fmt: skip
    fig.tight_layout()
    return fig


def misclassified_figure(
    images: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, columns: int = 8
) -> Figure:
    """Up to 32 wrong test predictions, titled 'predicted / true'."""
    n = min(len(images), 32)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), dpi=80)
    for k, ax in enumerate(axes.flat if hasattr(axes, "flat") else [axes]):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].reshape(28, 28).cpu(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{CLASSES[int(preds[k])]}\n/ {CLASSES[int(targets[k])]}", fontsize=7)
    fig.suptitle("Misclassified: predicted / true", fontsize=9)
    fig.tight_layout()
    return fig
