"""Report the objective to the run's Optuna trial after every epoch; stop when the pruner says so.
A run sized by `budget_min` reports at tenths of its schedule instead of epochs (`report_step`).

The Optuna sweeper adds it to each trial's config as an ordinary callback (`callbacks.trial`,
fmnist/sweeps/search/loop.py); never listed in `conf/callbacks/`. Pruning is an ordinary early
stop with its reason: the run ends at the epoch boundary with everything a finished run has
(checkpoints, results, TensorBoard) and `status: pruned`.
"""

from __future__ import annotations

import json
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.errors import ConfigError


class TrialReport(Callback):
    def __init__(self, storage: str, study: str, number: int, pruner: str = "null"):
        """`pruner`: the sweeper's `pruner` setting as JSON (a name or a {_target_: ...})."""
        self.storage, self.study, self.number = storage, study, number
        self.pruner = json.loads(pruner)
        self.trial: Any = None  # optuna.Trial, opened at the run's start

    def on_run_start(self, state: RunState) -> None:
        from fmnist.sweeps.search.study import load_trial

        if state.monitor is None:
            raise ConfigError(
                "data.val_size=0 is invalid in an Optuna search: the objective is measured on "
                "validation (data.val_size > 0)"
            )
        self.trial = load_trial(self.storage, self.study, self.number, self.pruner)
        if self.trial is None:
            state.log.warning(
                "trial %d of study %s has ended: this run trains on without reporting to it",
                self.number,
                self.study,
            )
            return
        state.log.info("trial %d of study %s (%s)", self.number, self.study, self.storage)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if self.trial is None or state.monitor not in row:  # not evaluated (eval_every)
            return
        step = report_step(state, state.epoch)
        earlier = [r["epoch"] for r in state.history[:-1] if state.monitor in r]
        if earlier and report_step(state, earlier[-1]) == step:
            return  # a budgeted run's second evaluation within a tenth of its schedule
        value = row[state.monitor]
        self.trial.report(value, step=step)
        if state.budget is not None and not earlier:
            return  # its steps are percents: the pruners' warm-up (in steps) would not cover it
        if state.epoch < state.cfg.epochs and self.trial.should_prune():
            state.should_stop = (
                f"pruned at epoch {state.epoch} by {type(self.trial.study.pruner).__name__}: "
                f"{state.monitor} {value:.4f}"
            )
            state.end_status = "pruned"


def report_step(state: RunState, epoch: int) -> int:
    """The step a trial reports `epoch` at: the epoch itself; in a run that sized itself to
    `budget_min` (its epochs chosen on its machine, so trials differ in length), the share of its
    schedule done, in percent rounded down to tens, so that the pruner compares trials at the
    same point of their schedules, not a long schedule's early epoch with a short one's end."""
    if state.budget is None:
        return epoch
    return 10 * (10 * epoch // state.cfg.epochs)
