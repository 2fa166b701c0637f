"""The training loop: one `fit` for a standalone run (a list of one) and for a fused group.

Everything per run (callbacks, NaN check, failure, selection, checkpoints, status) is written
here once and applies to each run; only the arithmetic of a step and of an evaluation pass is
the compute step's (`fmnist.engine.step`: eager or a CUDA graph for one run, fused for several).
A run that fails (its loss diverges, a callback cannot write) leaves the list with its own
traceback in its own log and the others go on; a failure of the shared step fails every run it
was computing; a signal stops them all at the next batch, after each has saved.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from fmnist import metrics
from fmnist.engine.fused_step import FusedStep
from fmnist.engine.signals import StopOnSignal
from fmnist.engine.state import RunState
from fmnist.engine.step import ComputeStep, SingleStep, check_finite
from fmnist.run.directory import write_traceback


def fit(runs: list[RunState], stop: StopOnSignal, step: ComputeStep | None = None) -> None:
    """Train `runs` (started at one epoch, sharing epochs, batches and evaluation) to
    `cfg.epochs`. Each run ends completed (or stopped early) or with `run.error` set; a signal
    raises `RunInterrupted` after every run still training recorded it."""
    active = list(runs)
    start = time.perf_counter()
    for run in active:
        run.run_start = start
    try:
        step = step or make_step(active)
        active = each(active, "on_run_start")
        stop.check()  # a signal during the build: stop before the first batch
        for epoch in range(runs[0].start_epoch + 1, runs[0].cfg.epochs + 1):
            active = step.keep(active)
            if not active:
                break
            for run in active:
                run.epoch, run.epoch_start = epoch, time.perf_counter()
            active = each(active, "on_epoch_start")
            active = train_epoch(step.keep(active), step, stop)
            active = end_epoch(step.keep(active), step)
            stop.check()
            for run in [r for r in active if r.should_stop]:
                run.log.info("stopping after epoch %d: %s", epoch, run.should_stop)
                each([run], "on_run_end")
            active = [r for r in active if not r.should_stop]
        each(active, "on_run_end")
    except KeyboardInterrupt as exc:  # a signal: every run still training records it and saves
        for run in active:
            if run.error is None:  # one that failed this epoch stays failed, with its reason
                run.tracker.on_exception(run, exc)
        raise
    except Exception as exc:  # noqa: BLE001  (the shared step failed: so did every run in it)
        for run in active:
            if run.error is None:
                fail(run, exc)


def make_step(runs: list[RunState]) -> ComputeStep:
    """Eager or graphed for one run; fused for several."""
    return SingleStep(runs[0]) if len(runs) == 1 else FusedStep(runs)


def fit_one(run: RunState, stop: StopOnSignal | None = None) -> dict[str, Any]:
    """`fit` for one run; raises its failure, returns its last results row. `stop`: the
    caller's signal handler when it holds one (`train` does), else its own."""
    with nullcontext(stop) if stop else StopOnSignal() as stop:
        fit([run], stop)
    if run.error is not None:
        raise run.error
    return run.history[-1]


def fail(run: RunState, exc: BaseException) -> None:
    """Record `run`'s failure in its own files: the traceback in its train.log (not the
    console), one line in its log, then its callbacks (status.json says failed)."""
    run.error = exc
    try:
        where = f"traceback in {write_traceback(run.run_dir)}"
    except OSError as also:  # the disk that failed the run may refuse this too
        where = f"no traceback written: {also.strerror or also}"
    run.log.error("run failed: %s: %s (%s)", type(exc).__name__, exc, where)
    run.tracker.on_exception(run, exc)


def guarded(active: list[RunState], action: Any) -> list[RunState]:
    """`action(run)` for each run; a run whose action raises fails alone. The runs left."""
    for run in active:
        try:
            action(run)
        except Exception as exc:  # noqa: BLE001  (any failure of one run ends that run only)
            fail(run, exc)
    return [r for r in active if r.error is None]


def each(active: list[RunState], hook: str, *args: Any) -> list[RunState]:
    """A tracker hook for every run."""
    return guarded(active, lambda run: getattr(run.tracker, hook)(run, *args))


def train_epoch(active: list[RunState], step: ComputeStep, stop: StopOnSignal) -> list[RunState]:
    if not active:
        return active
    first = active[0]
    nan_every = first.cfg.runtime.nan_check_interval or (1 if first.device.type == "cpu" else 50)
    ema_every = {id(run): run.cfg.ema.every for run in active}  # read once, not each batch
    for run in active:
        run.running_loss.zero_()
        run.running_correct.zero_()
        run.running_seen = 0
        run.model.train()
    batches = {id(run): iter(run.data.train.epoch(run.epoch)) for run in active}
    for batch_idx in range(first.batches_per_epoch):
        active = step.keep(active)
        if not active:
            break
        batch = [next(batches[id(run)], None) for run in active]
        if any(b is None for b in batch):
            break
        step.train(batch)
        for run, (_, labels) in zip(active, batch, strict=True):
            if run.scheduler is not None:
                run.scheduler.step()  # per batch: cosine and one-cycle need it
            if run.ema is not None and run.step % ema_every[id(run)] == 0:
                run.ema.update_parameters(run.model)
            run.step += 1
            run.running_seen += len(labels)
        # a check syncs a GPU, so there only every 50 steps; one look at all runs' sums first
        if active[0].step % nan_every == 0 and not step.finite():
            where = f"at epoch {first.epoch}, batch {batch_idx + 1}"
            active = guarded(active, lambda run, where=where: check_finite(run, where))
        active = each(active, "on_batch_end", batch_idx)
        stop.check()
    return active


def evaluated(run: RunState) -> bool:
    """Whether this epoch evaluates val and test: every `eval_every` epochs and the last."""
    return run.epoch % run.cfg.eval_every == 0 or run.epoch == run.cfg.epochs


def end_epoch(active: list[RunState], step: ComputeStep) -> list[RunState]:
    """Evaluate (on evaluated epochs: one pass per split for all runs), then each run's results
    row, selection (on validation only) and on_epoch_end."""
    active = guarded(active, lambda run: check_finite(run, f"in epoch {run.epoch}"))
    active = step.keep(active)
    if not active:
        return active
    for run in active:
        run.evals = {}
    first = active[0]
    if evaluated(first):
        keep = [run.tracker.wants_outputs(run) for run in active]
        test = step.evaluate(first.data.test, first.cfg.limit_test_batches, keep, wrong=32)
        val = step.evaluate(first.data.val, None, keep, wrong=0) if first.data.val else None
        for i, run in enumerate(active):
            run.evals["test"] = test[i]
            if val is not None:
                run.evals["val"] = val[i]
    rows: dict[int, dict[str, Any]] = {}
    active = guarded(active, lambda run: rows.__setitem__(id(run), results_row(run)))
    return guarded(active, lambda run: run.tracker.on_epoch_end(run, rows[id(run)]))


def results_row(run: RunState) -> dict[str, Any]:
    """This epoch's row from the training sums and `run.evals`; appended to the history, and the
    selected epoch updated."""
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
