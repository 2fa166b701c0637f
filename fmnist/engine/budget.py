"""`budget_min=M`: a run that sizes itself to M minutes of training on this machine.

A throwaway copy of the run (same data, model, optimizer and precision, no callbacks) times
training steps after a warm-up and a few evaluation batches; from them the run chooses its
epochs, and a wider `eval_every` where evaluations would take over a tenth of the budget. The
run is then built exactly as `budget_min=null epochs=E eval_every=K` builds it (its schedule ends
at its last epoch, not cut off), and the choice is recorded in status.json, provenance.json and
the results: a resume continues with it instead of timing again.

The budget covers the timing and the training with its evaluations (the run's `run_duration`);
process start-up and the end-of-run figures come on top.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict, read_write

from fmnist.config import ConfigError
from fmnist.engine.build import build_run
from fmnist.engine.fit import make_step
from fmnist.engine.state import RunState
from fmnist.run.status import read_status

FILL = 0.9  # the expected time aims at this share of the budget: noise must not push it over
EVAL_SHARE = 0.1  # evaluations take at most this share (eval_every is widened otherwise)
TIMING_SHARE = 0.04  # timed steps take at most this share of the budget...
TIMING_MAX_S = 10.0  # ...and at most this long
WARM_UP_STEPS = 3  # untimed first steps (allocations, kernel choices, a CUDA graph's capture)
EPOCH_OVERHEAD_S = 0.05  # per epoch: results, checkpoint, TensorBoard (measured: 20-60 ms)


@dataclass(frozen=True)
class Budget:
    """What a budgeted run chose and the measurements it chose from (seconds)."""

    minutes: float
    epochs: int
    eval_every: int
    step_s: float  # one training step
    epoch_s: float  # one epoch's steps and its bookkeeping
    eval_s: float  # one evaluation of val and test
    timing_s: float  # the throwaway build and the timing itself
    expected_s: float  # timing + epochs + evaluations

    def overrides(self) -> str:
        return f"budget_min=null epochs={self.epochs} eval_every={self.eval_every}"


def recorded(run_dir: Path) -> Budget | None:
    """The choice an earlier attempt of this run made (its status.json), if any."""
    status = read_status(run_dir) or {}
    found = status.get("budget")
    if not isinstance(found, dict):
        return None
    try:
        return Budget(**found)
    except TypeError:
        return None  # not a shape this package wrote: time again


def apply(cfg: DictConfig, budget: Budget) -> None:
    with read_write(cfg), open_dict(cfg):
        cfg.epochs = budget.epochs
        cfg.eval_every = budget.eval_every


def choose(
    epoch_s: float, eval_s: float, available_s: float, eval_every: int | None, max_eval_s: float
) -> tuple[int, int] | None:
    """The most epochs E (and the smallest eval_every K from the configured one up) such that E
    epochs and their ceil(E/K) evaluations take at most `available_s`, evaluations at most
    `max_eval_s`. `eval_every` None: once, at the end. None when not even one epoch fits."""
    k = eval_every
    for _ in range(10):  # widening K frees time for epochs, which may need a wider K: settles fast
        e = math.floor(available_s / epoch_s)
        while e >= 1 and e * epoch_s + math.ceil(e / (k or e)) * eval_s > available_s:
            e -= 1
        if e < 1:
            return None
        k_e = min(k or e, e)
        evals = math.ceil(e / k_e)
        if evals * eval_s <= max_eval_s or k_e == e:
            return e, k_e
        fit = max(1, math.floor(max_eval_s / eval_s))  # evaluations that fit their share
        k = max(k_e + 1, math.ceil(e / fit))
    return e, k_e


def size_to_budget(cfg: DictConfig, run_dir: Path, log: logging.Logger) -> Budget:
    """Time a throwaway copy of the run and set `cfg.epochs` and `cfg.eval_every` to fit
    `cfg.budget_min`; one line in the run's log says what was chosen and why."""
    budget_s = cfg.budget_min * 60
    start = time.perf_counter()
    probe = throwaway(cfg, run_dir)
    build_s = time.perf_counter() - start
    step_s = time_steps(probe, min(TIMING_MAX_S, TIMING_SHARE * budget_s))
    eval_s = time_evaluation(probe)
    steps = probe.batches_per_epoch
    epoch_s = step_s * steps + EPOCH_OVERHEAD_S
    timing_s = time.perf_counter() - start
    del probe
    # the run is built again after this: another build_s before its first step
    available = FILL * budget_s - timing_s - build_s
    # `eval_every: ${epochs}` (experiment=fast): evaluated once, at the end, whatever the epochs
    once = cfg.eval_every == cfg.epochs > 1
    chosen = choose(
        epoch_s, eval_s, available, None if once else cfg.eval_every, EVAL_SHARE * budget_s
    )
    if chosen is None:
        need = (timing_s + build_s + epoch_s + eval_s) / FILL / 60
        raise ConfigError(
            f"budget_min={cfg.budget_min} is too short here: timing took {timing_s:.1f} s, one "
            f"epoch takes {epoch_s:.1f} s and an evaluation {eval_s:.1f} s; "
            f"give at least budget_min={math.ceil(need * 100) / 100}"
        )
    epochs, eval_every = chosen
    evals = math.ceil(epochs / eval_every)
    budget = Budget(
        minutes=float(cfg.budget_min),
        epochs=epochs,
        eval_every=eval_every,
        step_s=round(step_s, 5),
        epoch_s=round(epoch_s, 3),
        eval_s=round(eval_s, 3),
        timing_s=round(timing_s, 2),
        expected_s=round(timing_s + build_s + epochs * epoch_s + evals * eval_s, 1),
    )
    ignored = f"; the config's epochs={cfg.epochs} is not used" if cfg.epochs != epochs else ""
    log.info(
        "budget_min=%g (%.0f s): %d epochs, evaluated every %d (%d evaluations): an epoch %.2f s "
        "(%d steps of %.1f ms), an evaluation %.2f s, timing %.1f s; expected %.0f s%s. "
        "The same run anywhere: %s",
        cfg.budget_min, budget_s, epochs, eval_every, evals, epoch_s, steps,
        step_s * 1000, eval_s, timing_s, budget.expected_s, ignored, budget.overrides(),
    )  # fmt: skip
    apply(cfg, budget)
    return budget


def throwaway(cfg: DictConfig, run_dir: Path) -> RunState:
    """The run as it will be built, without callbacks (nothing is written) and without its log
    line (the real build says it)."""
    quiet = logging.getLogger("fmnist.budget.timing")
    quiet.setLevel(logging.WARNING)
    probe_cfg = cfg.copy()
    with read_write(probe_cfg), open_dict(probe_cfg):
        probe_cfg.callbacks = {}
        probe_cfg.scheduler = None  # one lr is enough to time a step
    return build_run(probe_cfg, run_dir, {"model": "timing"}, quiet)


def training_batches(run: RunState) -> Iterator[Any]:
    """The run's training batches, epoch after epoch, as `fit` draws them."""
    for epoch in itertools.count(1):
        for i, batch in enumerate(run.data.train.epoch(epoch)):
            if i >= run.batches_per_epoch:
                break
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run: RunState, limit_s: float) -> float:
    """Seconds per training step (drawing the batch included), after a warm-up."""
    step, batches = make_step([run]), training_batches(run)
    run.model.train()

    def one() -> None:
        step.train([next(batches)])
        if run.ema is not None and run.step % run.cfg.ema.every == 0:
            run.ema.update_parameters(run.model)
        run.step += 1

    for _ in range(WARM_UP_STEPS):
        one()
    sync(run.device)
    n, start = 0, time.perf_counter()
    while n < 3 or (time.perf_counter() - start < limit_s and n < run.batches_per_epoch):
        one()
        n += 1
    sync(run.device)
    return (time.perf_counter() - start) / n


def time_evaluation(run: RunState) -> float:
    """Seconds for one evaluation of val and test, from timed batches after a warm-up one."""
    step = make_step([run])
    splits = [(run.data.test, run.cfg.limit_test_batches), (run.data.val, None)]
    total = 0.0
    for loader, limit in splits:
        if loader is None:
            continue
        n = min(len(loader), limit or len(loader))
        step.evaluate(loader, 1, [False], 0)  # warm-up
        timed = min(n, 2)
        start = time.perf_counter()
        step.evaluate(loader, timed, [False], 0)
        sync(run.device)
        total += (time.perf_counter() - start) / timed * n
    return total
