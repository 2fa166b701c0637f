"""Stop a run when the objective (`monitor`, on validation) has not improved for `patience` epochs."""

from __future__ import annotations

from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.metrics import better


class EarlyStopping(Callback):
    def __init__(self, patience: int = 5, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"callbacks.early_stopping.patience={patience} is invalid: >= 1")
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.wait = 0  # epochs since the last improvement

    def on_run_start(self, state: RunState) -> None:
        if state.monitor is None:
            state.log.warning("early stopping is off: no validation split (data.val_size=0)")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if state.monitor is None or state.monitor not in row:  # not evaluated (eval_every)
            return
        value = row[state.monitor]
        if better(state.monitor, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.should_stop = (
                f"early stopping: {state.monitor} has not improved on {self.best:.4f} "
                f"for {self.patience} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]
