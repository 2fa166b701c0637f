"""The training loop. It calls the tracker's hooks in the order things happen and knows no files."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from fmnist import metrics
from fmnist.callbacks.base import Tracker
from fmnist.engine.signals import StopOnSignal
from fmnist.engine.step import Step, check_finite, make_step
from fmnist.metrics import evaluate
from fmnist.rundir import write_traceback
from fmnist.state import RunState

log = logging.getLogger("fmnist")


def fit(run: RunState, tracker: Tracker, stop: StopOnSignal | None = None) -> dict[str, Any]:
    """Train from `run.start_epoch` to `cfg.epochs`; returns the last epoch's results row.
    `stop`: the caller's signal handler when it holds one (train does), else fit's own."""
    step = make_step(run)
    run.run_start = time.perf_counter()
    with nullcontext(stop) if stop else StopOnSignal() as stop, failure_reported(run, tracker):
        tracker.on_run_start(run)
        stop.check()  # a signal during the build: stop before the first batch
        for epoch in range(run.start_epoch + 1, run.cfg.epochs + 1):
            run.epoch, run.epoch_start = epoch, time.perf_counter()
            tracker.on_epoch_start(run)
            train_epoch(run, step, tracker, stop)
            keep = evaluated(run) and tracker.wants_outputs(run)
            tracker.on_epoch_end(run, end_epoch(run, keep))
            stop.check()
            if run.should_stop:
                log.info("stopping after epoch %d: %s", epoch, run.should_stop)
                break
        tracker.on_run_end(run)
    return run.history[-1]


def train_epoch(run: RunState, step: Step, tracker: Tracker, stop: StopOnSignal) -> None:
    run.running_loss.zero_()
    run.running_correct.zero_()
    run.running_seen = 0
    nan_every = run.cfg.runtime.nan_check_interval or (1 if run.device.type == "cpu" else 50)
    ema_every = run.cfg.ema.every
    run.model.train()
    for batch_idx, (images, labels) in enumerate(run.data.train.epoch(run.epoch)):
        if batch_idx >= run.batches_per_epoch:
            break
        step(images, labels)
        if run.scheduler is not None:
            run.scheduler.step()  # per batch: cosine and one-cycle need it
        if run.ema is not None and run.step % ema_every == 0:
            run.ema.update_parameters(run.model)
        run.step += 1
        run.running_seen += len(labels)
        if run.step % nan_every == 0:  # a check syncs a GPU, so there only every 50 steps
            check_finite(run, f"at epoch {run.epoch}, batch {batch_idx + 1}")
        tracker.on_batch_end(run, batch_idx)
        stop.check()


def evaluated(run: RunState) -> bool:
    """Whether this epoch evaluates val and test: every `eval_every` epochs and the last."""
    return run.epoch % run.cfg.eval_every == 0 or run.epoch == run.cfg.epochs


def end_epoch(run: RunState, keep: bool) -> dict[str, Any]:
    """Evaluate (on evaluated epochs), select (on validation only), and build this epoch's
    results row. `keep`: the evaluations also keep probabilities and misclassified images (a
    callback asked for them)."""
    cfg, data, model = run.cfg, run.data, run.eval_model
    check_finite(run, f"in epoch {run.epoch}")
    run.evals = {}
    if not evaluated(run):
        return results_row(run)
    tta = {"tta": cfg.tta, "translate": cfg.tta_translate, "keep_outputs": keep}
    run.evals["test"] = evaluate(model, data.test, cfg.limit_test_batches, 32 if keep else 0, **tta)
    if data.val is not None:
        run.evals["val"] = evaluate(model, data.val, keep_wrong=0, **tta)
    return results_row(run)


def results_row(run: RunState) -> dict[str, Any]:
    """This epoch's row from the training sums and `run.evals`; appended to the history, and the
    selected epoch updated. The fused loop (fmnist/fused/) builds its members' rows here too."""
    seen, train_correct = run.running_seen, int(run.running_correct.item())
    row: dict[str, Any] = {
        "run": run.name,
        "epoch": run.epoch,
        "loss": run.running_loss.item() / seen,
        "accuracy": train_correct / seen,
        "num_correct": train_correct,
    }
    if "test" in run.evals:  # an epoch without evaluation (eval_every) has no test/val columns
        test = run.evals["test"]
        row |= {
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_num_correct": test["num_correct"],
        }
    if "val" in run.evals:
        row |= {"val_loss": run.evals["val"]["loss"], "val_accuracy": run.evals["val"]["accuracy"]}
    row["lr_current"] = run.optimizer.param_groups[0]["lr"]
    now = time.perf_counter()
    row["epoch_duration"] = now - run.epoch_start
    row["run_duration"] = run.previous_duration + now - run.run_start
    row |= {k: v for k, v in run.hparams.items() if k not in row}
    run.history.append(row)
    select(run)
    return row


def select(run: RunState) -> None:
    """best.pt follows the objective on validation; with no validation split, the last epoch."""
    chosen = metrics.select(run.history, run.monitor)
    run.best = {
        "metric": run.monitor,
        "value": chosen.get(run.monitor) if run.monitor else None,
        "epoch": chosen["epoch"],
        "test_accuracy": chosen.get("test_accuracy"),
    }


@contextmanager
def failure_reported(run: RunState, tracker: Tracker) -> Iterator[None]:
    """On any failure: the traceback to the job's log (not the console), then on_exception."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            log_file = write_traceback(run.run_dir)
            log.error("run failed: %s: %s (traceback in %s)", type(exc).__name__, exc, log_file)
        tracker.on_exception(run, exc)
        raise
