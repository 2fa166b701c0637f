"""Test-time augmentation: the views of a batch a model is evaluated on, and their weights.

`tta` alone: each image and its mirror image, equal weights. `translate=t` adds both views
shifted by (+t, +t) and (-t, -t) pixels with zeros shifted in (the background of these images),
weighted as airbench's multi-crop TTA: half on the unshifted pair, half on the shifted ones.
Written on slicing alone, so the same views serve torch tensors and numpy arrays (ONNX).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Array = Any  # a torch.Tensor or a numpy.ndarray of shape (N, C, H, W)


def mirror(x: Array) -> Array:
    return x.flip(-1) if hasattr(x, "flip") and callable(x.flip) else x[..., ::-1].copy()


def shift(x: Array, d: int) -> Array:
    """`x` moved by d pixels down and right (d < 0: up and left), zeros shifted in."""
    out = x * 0
    if d > 0:
        out[..., d:, d:] = x[..., :-d, :-d]
    else:
        out[..., :d, :d] = x[..., -d:, -d:]
    return out


def views(x: Array, tta: bool, translate: int = 0) -> list[tuple[float, Array]]:
    """(weight, view) pairs whose weights sum to 1."""
    if not tta:
        return [(1.0, x)]
    if not translate:
        return [(0.5, x), (0.5, mirror(x))]
    pairs = [(x, 0.25), (shift(x, translate), 0.125), (shift(x, -translate), 0.125)]
    return [(w, v) for view, w in pairs for v in (view, mirror(view))]


def tta_logits(forward: Callable[[Array], Array], x: Array, tta: bool, translate: int = 0) -> Array:
    """The weighted mean of `forward`'s logits over the views of `x`."""
    out = None
    for weight, view in views(x, tta, translate):
        logits = forward(view) * weight
        out = logits if out is None else out + logits
    return out


def describe(tta: bool, translate: int = 0) -> str:
    """How reports name it: "", "flip TTA" or "flip + 1-pixel shift TTA"."""
    if not tta:
        return ""
    return f"flip + {translate}-pixel shift TTA" if translate else "flip TTA"
