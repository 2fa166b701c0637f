"""Classify your own pictures with a trained model: top-3 classes with probabilities.

    fmnist-predict outputs/runs/2026-11-27/10-00-00_123 shoe.jpg shirt.png [--json]
    fmnist-predict path/to/best.pt shoe.jpg                  # a checkpoint file alone
    fmnist-predict --onnx export/model.onnx shoe.jpg         # onnxruntime only, no torch

Any size, colour or bit depth PIL opens: converted to grayscale (16-bit and palette images
included), inverted when the background is light (Fashion-MNIST shows light garments on black),
cropped to the object and fitted into 28x28 keeping its aspect. The preprocessing is NumPy only,
so the ONNX path never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist import CLASSES
from fmnist.commands.console import closed_pipe_is_fine
from fmnist.tta import tta_logits

MAX_PIXELS = 40_000_000  # larger images are refused (a decompression bomb costs GBs of memory)


class ImageError(ValueError):
    """Missing, unreadable, too large or not an image."""


def grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 gray levels in [0, 255]."""
    image = ImageOps.exif_transpose(image)
    if image.mode in (
        "I;16",
        "I;16B",
        "I;16L",
        "I;16N",
        "I",
        "F",
    ):  # 16/32-bit gray: keep the range
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return np.clip(pixels * (255.0 / top), 0, 255)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)  # transparent = the page it would be shown on
    return np.asarray(image.convert("L"), dtype=np.float32)


def to_fashion_mnist(image: Image.Image) -> np.ndarray:
    """A PIL image -> a 1 x 28 x 28 float32 array in [0, 1] that looks like Fashion-MNIST."""
    pixels = grayscale(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # light background: invert to light-on-black
        pixels = 255.0 - pixels
    if pixels.shape == (28, 28):  # already Fashion-MNIST's format: use it as it is
        return (pixels / 255.0)[None].astype(np.float32)
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
    return (np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def load_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: too large ({image.width}x{image.height} pixels; at most {MAX_PIXELS:,})"
                    )
                image.load()
                return to_fashion_mnist(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__})") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_classes(probs: np.ndarray, top: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:top]
    return [{"class": CLASSES[i], "index": int(i), "probability": float(probs[i])} for i in order]


def torch_logits(path: str, checkpoint: str, tta: bool | None) -> tuple[Callable, bool]:
    """(image batch -> logits) with the PyTorch model of a run or checkpoint file."""
    import torch

    from fmnist.run.checkpoint import load_trained

    trained = load_trained(path, checkpoint)
    use_tta = bool(trained.checkpoint.get("tta")) if tta is None else tta
    translate = int(trained.checkpoint.get("tta_translate") or 0)  # as trained, with TTA

    @torch.inference_mode()
    def logits(x: np.ndarray) -> np.ndarray:
        model = trained.model
        out = tta_logits(lambda v: model(v).float(), torch.from_numpy(x), use_tta, translate)
        return out.numpy()

    return logits, use_tta


def trained_with_tta(onnx_path: Path) -> tuple[bool, int]:
    """As exported: the model.json written beside model.onnx says whether TTA was used, and
    with which shift (0: mirror only)."""
    try:
        meta = json.loads((onnx_path.parent / "model.json").read_text())
        shift = meta.get("tta_translate") or 0
        return meta.get("tta") is True, shift if isinstance(shift, int) and 0 <= shift <= 4 else 0
    except (OSError, ValueError, AttributeError):
        return False, 0


def onnx_logits(path: str, tta: bool | None) -> tuple[Callable, bool]:
    """(image batch -> logits) with onnxruntime alone."""
    from fmnist.commands.export import ExportError, onnx_session

    try:
        session = onnx_session(path)
    except ExportError as exc:
        raise ImageError(str(exc)) from None
    name = session.get_inputs()[0].name
    as_trained, translate = trained_with_tta(Path(path))
    use_tta = as_trained if tta is None else tta

    def logits(x: np.ndarray) -> np.ndarray:
        return tta_logits(lambda v: session.run(None, {name: v})[0], x, use_tta, translate)

    return logits, use_tta


@closed_pipe_is_fine
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fmnist-predict", description="Classify images with a trained model."
    )
    parser.add_argument("run", nargs="?", help="a run directory or a checkpoint file (.pt)")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--onnx", help="an exported model.onnx: classify with onnxruntime only")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip TTA (default: as trained)",
    )
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= len(CLASSES):
        print(f"error: --top {args.top}: must be 1 to {len(CLASSES)}", file=sys.stderr)
        return 2
    images = list(args.images)
    if args.onnx and args.run:
        images = [args.run, *images]  # with --onnx there is no run: every path is an image
    try:
        if args.onnx:
            logits, _ = onnx_logits(args.onnx, args.tta)
        else:
            from fmnist.run.directory import RunDirError

            try:
                logits, _ = torch_logits(args.run, args.checkpoint, args.tta)
            except RunDirError as exc:
                raise ImageError(str(exc)) from None
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path in images:
        try:
            probs = softmax(logits(load_image(path)[None]))[0]
            results.append({"image": path, "top": top_classes(probs, args.top)})
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
