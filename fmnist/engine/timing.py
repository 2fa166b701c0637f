"""Timing a run before it trains: a throwaway copy of it (same data, model, optimizer, precision
and step, no callbacks) steps through training batches and evaluates a few test and validation
batches, so that `budget_min` can choose epochs from this machine's own speed."""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict, read_write

from fmnist.engine.build import build_run
from fmnist.engine.fit import make_step
from fmnist.engine.signals import StopOnSignal
from fmnist.engine.state import RunState

WARM_UP_STEPS = 3  # untimed first steps (allocations, kernel choices, a CUDA graph's capture)
EPOCH_OVERHEAD_S = 0.05  # per epoch: results, checkpoint, TensorBoard (measured: 20-60 ms)


@dataclass(frozen=True)
class Timing:
    """One model's timing (seconds): its throwaway build, warm-up, step, epoch and evaluation."""

    build_s: float
    warm_s: float
    step_s: float
    epoch_s: float
    eval_s: float
    steps: int


def throwaway(cfg: DictConfig, run_dir: Path) -> RunState:
    """The run as it will be built (same step: eager or CUDA graph, as its scheduler decides),
    without callbacks (nothing is written) and without its log line (the real build says it).
    Its schedule spans far more steps than are timed (it is never stepped to its end)."""
    quiet = logging.getLogger("fmnist.budget.timing")
    quiet.setLevel(logging.WARNING)
    probe_cfg = copy.deepcopy(cfg)
    with read_write(probe_cfg), open_dict(probe_cfg):
        probe_cfg.callbacks = {}
        probe_cfg.epochs = 10_000
    return build_run(probe_cfg, run_dir, {"model": "timing"}, quiet)


def release(run: RunState) -> None:
    """Free the throwaway run's memory now (its compute step holds a reference cycle)."""
    run.model = run.optimizer = run.scheduler = run.ema = run.data = None  # type: ignore[assignment]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    elif device.type == "mps":
        torch.mps.synchronize()


def time_steps(run: RunState, limit_s: float, stop: StopOnSignal) -> tuple[float, float]:
    """Seconds of the warm-up steps, and per training step after them (drawing the batch, the
    schedule and the NaN check included, as `fit` does them)."""
    step, batches = make_step([run]), training_batches(run)
    run.model.train()
    nan_every = run.cfg.runtime.nan_check_interval or (1 if run.device.type == "cpu" else 50)

    def one() -> None:
        step.train([next(batches)])
        if run.scheduler is not None:
            run.scheduler.step()
        if run.ema is not None and run.step % run.cfg.ema.every == 0:
            run.ema.update_parameters(run.model)
        run.step += 1
        if run.step % nan_every == 0:
            step.finite()
        stop.check()

    start = time.perf_counter()
    for _ in range(WARM_UP_STEPS):
        one()
    sync(run.device)
    warm_s = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    while n < 3 or (time.perf_counter() - start < limit_s and n < run.batches_per_epoch):
        one()
        n += 1
    sync(run.device)
    return warm_s, (time.perf_counter() - start) / n


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


def time_model(cfg: DictConfig, run_dir: Path, limit_s: float, stop: StopOnSignal) -> Timing:
    """Time a throwaway copy of the run: its steps for about `limit_s`, and one evaluation."""
    start = time.perf_counter()
    probe = throwaway(cfg, run_dir)
    build_s = time.perf_counter() - start
    warm_s, step_s = time_steps(probe, limit_s, stop)
    eval_s = time_evaluation(probe)
    steps = probe.batches_per_epoch
    release(probe)
    del probe
    epoch_s = step_s * steps + EPOCH_OVERHEAD_S
    return Timing(build_s, warm_s, step_s, epoch_s, eval_s, steps)


def with_model(cfg: DictConfig, settings: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` whose model has these settings."""
    out = copy.deepcopy(cfg)
    with read_write(out), open_dict(out):
        for name, value in settings.items():
            out.model[name] = value
    return out
