"""Report the objective to the run's Optuna trial after every epoch; stop when the pruner says so.

Added by the engine to a run that an Optuna search launched (`trial.number` set by the sweeper);
never listed in `conf/callbacks/`. A pruned run ends at the epoch boundary with everything a
finished run has (checkpoints, results, TensorBoard) and `status: pruned`.
"""

from __future__ import annotations

import logging
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.config import ConfigError

log = logging.getLogger("fmnist")


class TrialReport(Callback):
    def __init__(self, storage: str, study: str, number: int, pruner: Any = None):
        self.storage, self.study, self.number, self.pruner = storage, study, number, pruner
        self.trial: Any = None  # optuna.Trial, opened at the run's start

    def on_run_start(self, state: RunState) -> None:
        from fmnist.search import load_trial

        if state.monitor is None:
            raise ConfigError(
                "data.val_size=0 is invalid in an Optuna search: the objective is measured on "
                "validation (data.val_size > 0)"
            )
        self.trial = load_trial(self.storage, self.study, self.number, self.pruner)
        if self.trial is None:
            log.warning(
                "trial %d of study %s has ended: this run trains on without reporting to it",
                self.number,
                self.study,
            )
            return
        log.info("trial %d of study %s (%s)", self.number, self.study, self.storage)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if self.trial is None or state.monitor not in row:  # not evaluated (eval_every)
            return
        value = row[state.monitor]
        self.trial.report(value, step=state.epoch)
        if state.epoch < state.cfg.epochs and self.trial.should_prune():
            state.should_stop = (
                f"pruned at epoch {state.epoch} by {type(self.trial.study.pruner).__name__}: "
                f"{state.monitor} {value:.4f}"
            )
            state.end_status = "pruned"
