"""Checkpoints and the trained models in them: loaded with `weights_only=True` (no code runs
from the file), models built only from this package's registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist.run.directory import RunDirError
from fmnist.run.status import read_status

CHECKPOINTS = "checkpoints"


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint as a dict; `weights_only=True`, so no code runs from the file."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # truncated, garbage, a pickle of code: all refused the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if "Weights only load failed" in first:  # torch's hint to load unsafely is not for us
            first = (
                "it holds objects other than tensors; loading it could run code, so it is refused"
            )
        raise RunDirError(
            f"{path} is damaged or not a checkpoint ({type(exc).__name__}: {first}); "
            "delete it, or resume to retrain from the previous good one"
        ) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise RunDirError(f"{path} is not an fmnist checkpoint (no model weights in it)")
    return blob


@dataclass
class Trained:
    """A model ready for inference and what its checkpoint says about it."""

    model: torch.nn.Module
    checkpoint: dict[str, Any]
    path: Path  # the checkpoint file
    label: str  # how to name it in output: the run directory, or the file


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory -> its checkpoints/<which>.pt; a .pt file stays itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory or checkpoint file")
    ckpt = checkpoint_path(path, which)
    if not ckpt.is_file():
        have = sorted(p.stem for p in ckpt.parent.glob("*.pt"))
        if read_status(path) is None and not (path / ".hydra").is_dir():
            raise RunDirError(f"{path} is not a run directory (no status.json, no checkpoints)")
        raise RunDirError(
            f"{path} has no {which} checkpoint ({ckpt}); available: {', '.join(have) or 'none'}"
        )
    return ckpt


def load_trained(path: str | Path, which: str = "best") -> Trained:
    """A run directory or a checkpoint file copied anywhere: the checkpoint describes its model."""
    from fmnist.models import ModelError, build_model

    ckpt_path = resolve_checkpoint(path, which)
    checkpoint = load_checkpoint(ckpt_path)
    spec = checkpoint.get("model_config")
    if not isinstance(spec, dict):
        raise RunDirError(
            f"{ckpt_path} does not say which model it holds (made by an older fmnist?)"
        )
    try:
        model = build_model(spec)
        model.load_state_dict(checkpoint["model"])
    except (ModelError, RuntimeError) as exc:
        raise RunDirError(f"{ckpt_path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    label = str(path) if Path(path).is_dir() else str(ckpt_path)
    return Trained(model, checkpoint, ckpt_path, label)
