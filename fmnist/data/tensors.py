"""Decode the IDX files once into uint8 tensors, cached on disk for every later process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fmnist.data.files import FILES, DataError, check_file, ensure_data, file_lock, raw_dir

CACHE_NAME = "fmnist-uint8.pt"
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _stamp(root: Path) -> list[list[int]]:
    """Size and mtime of each raw file: the cache is valid only for exactly these files."""
    return [
        [(raw_dir(root) / spec.name).stat().st_size, (raw_dir(root) / spec.name).stat().st_mtime_ns]
        for spec in FILES
    ]


def _decode(path: Path, spec_index: int) -> torch.Tensor:
    header = 16 if FILES[spec_index].magic == 2051 else 8
    array = np.fromfile(path, dtype=np.uint8, offset=header)
    if header == 16:
        array = array.reshape(-1, 28, 28)
    return torch.from_numpy(array.copy())


def load_tensors(root: str | Path, download: bool = True) -> dict[str, torch.Tensor]:
    """Return {train,test}_{images,labels}: uint8 N x 28 x 28 images and int64 labels."""
    root = Path(root)
    cache = root / "FashionMNIST" / CACHE_NAME
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            if blob.get("stamp") == _stamp(root):
                return {k: blob[k] for k in KEYS}
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # stale or damaged cache: rebuild it from the checked raw files
    ensure_data(root, download=download)
    with file_lock(root / ".fmnist-prepare.lock"):
        for spec in FILES:
            check_file(raw_dir(root) / spec.name, spec, root)
        decoded = [_decode(raw_dir(root) / spec.name, i) for i, spec in enumerate(FILES)]
        blob = dict(zip(KEYS, decoded, strict=True))
        for key in ("train_labels", "test_labels"):
            blob[key] = blob[key].long()
        if int(blob["train_labels"].max()) > 9 or int(blob["test_labels"].max()) > 9:
            raise DataError(f"labels out of range 0..9 in {raw_dir(root)}: delete and re-prepare")
        tmp = cache.with_name(f"{CACHE_NAME}.{os.getpid()}.tmp")
        torch.save({**blob, "stamp": _stamp(root)}, tmp)
        os.replace(tmp, cache)
    return blob
