"""Pictures for TensorBoard, evaluate and compare: PIL images, and matplotlib figures (Agg)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from fmnist import CLASSES

if TYPE_CHECKING:  # torch is imported where a picture is made of tensors: compare reads none
    import torch
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display), imported on first use: it costs
    about 0.5 s, which every training run and sweep job would otherwise pay at start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: list[list[int]], title: str = "Confusion matrix (test)") -> Figure:
    """Counts in every cell, rows true classes, columns predictions; the diagonal is correct."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float32)
    fig, ax = pyplot().subplots(figsize=(7.5, 6.5), dpi=80)
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
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > high else "black",
            )
    fig.tight_layout()
    return fig


# Per-epoch TensorBoard images are drawn with PIL: a matplotlib figure costs ~0.5 s an epoch,
# more than the rest of the tracker together.
def _font(size: int):  # noqa: ANN202
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def confusion_image(
    matrix: list[list[int]], title: str = "Confusion matrix (test): rows true, columns predicted"
):  # noqa: ANN201
    """The confusion matrix as an HWC uint8 array: counts in blue-shaded cells, named classes."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    counts = np.asarray(matrix, dtype=np.float64)
    cell, left, top = 46, 92, 44
    image = Image.new("RGB", (left + 10 * cell + 8, top + 10 * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(12), _font(10)
    draw.text((6, 6), title, fill="black", font=font)
    shades = (colormaps["Blues"](counts / max(counts.max(), 1))[..., :3] * 255).astype(int)
    for j, name in enumerate(CLASSES):
        draw.text((left + j * cell + 2, top - 14), name.split("/")[0][:7], fill="black", font=small)
    for i, name in enumerate(CLASSES):
        draw.text((4, top + i * cell + cell // 2 - 6), name, fill="black", font=small)
        for j in range(10):
            x, y = left + j * cell, top + i * cell
            draw.rectangle(
                (x, y, x + cell - 1, y + cell - 1), fill=tuple(shades[i, j]), outline="white"
            )
            text = str(int(counts[i, j]))
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            draw.text((x + cell // 2, y + cell // 2), text, fill=color, font=font, anchor="mm")
    return np.asarray(image)


def _sheet(images: torch.Tensor, columns: int, margin: int, title: str, caption):  # noqa: ANN001, ANN202
    """A white sheet of 3x-enlarged 28x28 tiles with a title; `caption(draw, k, x, y)` writes
    under tile k (whose top-left corner is x, y). Returns an HWC uint8 array."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    scale, below = 3, 30
    tile_w, tile_h = 28 * scale + 2 * margin, 28 * scale + below
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * tile_w, rows * tile_h + 22), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill="black", font=_font(12))
    for k in range(len(images)):
        pixels = (images[k].reshape(28, 28).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        tile = Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)
        x, y = (k % columns) * tile_w + margin, (k // columns) * tile_h + 22
        sheet.paste(tile.convert("RGB"), (x, y))
        caption(draw, k, x, y + 28 * scale)
    return np.asarray(sheet)


def misclassified_image(
    images: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, columns: int = 8
):  # noqa: ANN201
    """Up to 32 wrong predictions as an HWC uint8 array, each captioned 'predicted / true'."""
    font = _font(10)

    def caption(draw, k: int, x: int, y: int) -> None:  # noqa: ANN001
        draw.text((x, y + 1), CLASSES[int(preds[k])], fill="firebrick", font=font)
        draw.text((x, y + 13), CLASSES[int(targets[k])], fill="darkgreen", font=font)

    title = "Misclassified test images: predicted / true"
    return _sheet(images[:32], columns, 4, title, caption)


def predictions_image(
    images: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, columns: int = 4
):  # noqa: ANN201
    """The tutorial's `plot_classes_preds`: each image titled with the predicted class, its
    probability and the true class, green when right and red when wrong (HWC uint8)."""
    font = _font(10)
    confidence, preds = probs.max(1)

    def caption(draw, k: int, x: int, y: int) -> None:  # noqa: ANN001
        color = "green" if int(preds[k]) == int(targets[k]) else "red"
        draw.rectangle((x - 2, y - 28 * 3 - 2, x + 28 * 3 + 1, y + 1), outline=color, width=2)
        label = f"{CLASSES[int(preds[k])]} {float(confidence[k]):.0%}"
        draw.text((x - 16, y + 2), label, fill=color, font=font)
        draw.text((x - 16, y + 14), f"(true: {CLASSES[int(targets[k])]})", fill=color, font=font)

    return _sheet(images, columns, 20, "Predicted (probability) / true class", caption)


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """N x 1 x H x W in [0, 1] -> 1 x H' x W' grid with white gutters (no torchvision import)."""
    import torch

    n, _, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.ones(1, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for k in range(n):
        y, x = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        grid[:, y : y + h, x : x + w] = images[k]
    return grid
