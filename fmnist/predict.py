"""Classify your own pictures with a trained run: top-3 classes with probabilities.

    python -m fmnist.predict outputs/runs/2026-11-27/10-00-00_123 shoe.jpg shirt.png [--json]

Any size or colour: converted to grayscale, inverted when the background is light (Fashion-MNIST
shows light garments on black), cropped to the object and fitted into 28x28 keeping its aspect.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist import CLASSES
from fmnist.trained import RunError, load_trained


class ImageError(ValueError):
    """Missing, unreadable or not an image."""


def to_fashion_mnist(image: Image.Image) -> torch.Tensor:
    """A PIL image -> a 1 x 28 x 28 float tensor in [0, 1] that looks like Fashion-MNIST."""
    gray = ImageOps.exif_transpose(image).convert("L")
    pixels = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # light background: invert to light-on-black
        pixels = 255.0 - pixels
    if pixels.shape == (28, 28):  # already Fashion-MNIST's format: use it as it is
        return torch.from_numpy(pixels / 255.0).unsqueeze(0)
    background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]))
    mask = np.abs(pixels - background) > 25
    if mask.any():  # crop to the object
        rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
        pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pixels = np.clip(pixels - background, 0, 255)
    h, w = pixels.shape
    scale = 28 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(pixels.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(small, ((28 - size[0]) // 2, (28 - size[1]) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


def load_image(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return to_fashion_mnist(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__})") from exc


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, top: int = 3) -> list[dict[str, Any]]:
    probs = torch.softmax(model(x.unsqueeze(0)).float(), dim=1)[0]
    values, indices = probs.topk(top)
    return [
        {"class": CLASSES[i], "index": int(i), "probability": float(p)}
        for p, i in zip(values, indices, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fmnist-predict", description="Classify images with a trained run."
    )
    parser.add_argument("run_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        _, model, _ = load_trained(args.run_dir, args.checkpoint)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in args.images:
        try:
            results.append({"image": path, "top": predict(model, load_image(path), args.top)})
        except ImageError as exc:
            failed += 1
            results.append({"image": path, "error": str(exc)})
            print(f"error: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "top" in r:
                guesses = ", ".join(f"{g['class']} {g['probability']:.1%}" for g in r["top"])
                print(f"{r['image']}: {guesses}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
