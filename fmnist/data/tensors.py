"""Decode the IDX files once into uint8 tensors, cached on disk for every later process.

Every byte used for training is verified: the raw files by SHA-256 whenever the cache is
(re)built, and the cache by a SHA-256 of its own decoded content each time it is loaded
(about 0.1 s for the 55 MB), so a damaged or tampered cache is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from fmnist.data.sources import FILES, DataError, check_file, ensure_data, file_lock, raw_dir

log = logging.getLogger(__name__)
CACHE_NAME = "fmnist-uint8.pt"
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def content_sha256(blob: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the decoded tensors (their bytes, in KEYS order)."""
    h = hashlib.sha256()
    for key in KEYS:
        h.update(blob[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_cache(cache: Path) -> dict[str, torch.Tensor] | None:
    """The cache if it is intact (its content matches its own checksum), else None."""
    try:
        blob = torch.load(cache, weights_only=True)
        tensors = {k: blob[k] for k in KEYS}
        if blob.get("sha256") == content_sha256(tensors):
            return tensors
    except Exception:  # noqa: BLE001  (random bytes, a truncated file, another format)
        pass
    log.warning("%s is damaged or stale: rebuilding it from the checked raw files", cache)
    return None


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
    if cache.exists() and (cached := _read_cache(cache)) is not None:
        return cached
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
        torch.save({**blob, "sha256": content_sha256(blob)}, tmp)
        os.replace(tmp, cache)
    return blob
