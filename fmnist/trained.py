"""Load a trained run: its own saved config, its model, and a checkpoint (safely)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import fmnist.config  # noqa: F401  (resolvers used by saved configs)
from fmnist.checkpoint import checkpoint_path, load_checkpoint


class RunError(ValueError):
    """Not a run, or a run without what was asked for; the message is one line."""


def load_trained(
    run_dir: str | Path, which: str = "best"
) -> tuple[DictConfig, torch.nn.Module, dict[str, Any]]:
    run_dir = Path(run_dir)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise RunError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.pt"))
        raise RunError(
            f"{run_dir} has no {which} checkpoint ({path}); available: {', '.join(have) or 'none'}"
        )
    cfg = OmegaConf.load(saved)
    try:
        checkpoint = load_checkpoint(path)  # weights_only=True: no code runs from the file
    except Exception as exc:
        raise RunError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    model = instantiate(cfg.model)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return cfg, model, checkpoint
