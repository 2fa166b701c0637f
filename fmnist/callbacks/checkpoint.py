"""`checkpoints/last.pt` after every epoch (what resume needs) and `best.pt` when selected.

Each checkpoint describes itself (model config, classes, input scaling, provenance), so
`fmnist-evaluate`, `fmnist-predict` and `fmnist-export` work on the file alone.
"""

from __future__ import annotations

from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.engine.state import checkpoint_payload
from fmnist.run.checkpoint import checkpoint_path
from fmnist.run.files import save_torch


class CheckpointCallback(Callback):
    def __init__(self, save_last: bool = True, save_best: bool = True):
        self.save_last, self.save_best = save_last, save_best

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        payload = checkpoint_payload(state)  # built once: it copies every state dict
        if self.save_best and state.best.get("epoch") == state.epoch:
            save_torch(checkpoint_path(state.run_dir, "best"), payload)
        if self.save_last:
            save_torch(checkpoint_path(state.run_dir, "last"), payload)
