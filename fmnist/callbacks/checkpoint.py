"""`checkpoints/last.pt` after every epoch (what resume needs) and `best.pt` on improvement."""

from __future__ import annotations

from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.checkpoint import checkpoint_path, rng_state
from fmnist.io import save_torch


def resume_payload(state: RunState) -> dict[str, Any]:
    """The whole state a run needs to continue exactly where it was."""
    return {
        "epoch": state.epoch,
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "rng": rng_state(),
        "history": state.history,
        "best": state.best,
        "extra": state.extra,
        "duration": state.history[-1]["run_duration"] if state.history else 0.0,
        "hparams": state.hparams,
    }


class CheckpointCallback(Callback):
    def __init__(self, save_last: bool = True, save_best: bool = True):
        self.save_last, self.save_best = save_last, save_best

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        payload = resume_payload(state)  # built once: it copies every state dict
        if self.save_best and state.best.get("epoch") == state.epoch:
            save_torch(checkpoint_path(state.run_dir, "best"), payload)
        if self.save_last:
            save_torch(checkpoint_path(state.run_dir, "last"), payload)
