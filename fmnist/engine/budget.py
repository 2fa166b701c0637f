"""`budget_min=M`: a run that sizes itself to M minutes of training on this machine.

A throwaway copy of the run (same data, model, optimizer and precision, no callbacks) times
training steps after a warm-up and a few evaluation batches; from them the run chooses its
epochs, and a wider `eval_every` where evaluations would take over a tenth of the budget. The
run is then built exactly as `epochs=E eval_every=K` without a budget builds it (its schedule ends
at its last epoch, not cut off), and the choice is recorded in status.json and provenance.json
(the results hold the chosen `epochs` and `eval_every`): a resume continues with it instead of
timing again, and `epochs=N` on the command line trains the run on further.

`budget_models` makes a faster machine train a bigger model rather than more epochs: each of its
models is timed in turn and the first of which at least its `min_epochs` fit is trained (its
settings recorded with the choice), else `model` as set.

The budget covers the timing, the real run's build after it (planned for, as a second build) and
the training with its evaluations (`timing_s` + the run's `run_duration`); process start-up and
the end-of-run figures come on top.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist.config import evaluated_once
from fmnist.engine.signals import StopOnSignal
from fmnist.engine.timing import WARM_UP_STEPS, time_model, with_model
from fmnist.errors import ConfigError
from fmnist.run.directory import RunDirError
from fmnist.run.files import read_object
from fmnist.run.provenance import PROVENANCE
from fmnist.run.status import STATUS, read_status
from fmnist.validation import settle_models

FILL = 0.9  # the expected time aims at this share of the budget: noise must not push it over
EVAL_SHARE = 0.1  # evaluations take at most this share (eval_every is widened otherwise)
TIMING_SHARE = 0.04  # timed steps take at most this share of the budget...
TIMING_MAX_S = 10.0  # ...and at most this long
ROW_S = 4e-5  # per epoch and row so far: results files and last.pt hold every row (1,000: 46 ms)


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
    model: dict[str, Any] | None = None  # a budget_models entry's settings; None = `model`

    def overrides(self) -> str:
        """The same run without a budget (an `epochs` on the command line turns it off)."""
        return f"epochs={self.epochs} eval_every={self.eval_every}{model_overrides(self.model)}"


def model_overrides(settings: dict[str, Any] | None) -> str:
    return "".join(f" model.{k}={v}" for k, v in (settings or {}).items())


def given(overrides: list[str], key: str) -> bool:
    """Whether the command line (the job's overrides) sets `key`."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in overrides)


def settle(cfg: DictConfig, overrides: list[str], log: logging.Logger) -> None:
    """`budget_min` and `epochs` together, in a run no budget has sized yet: the command line's
    wins over the config's (a preset's), in one line (`experiment=best epochs=1` trains one
    epoch); both on the command line are refused. Otherwise a budget chooses the epochs."""
    if cfg.budget_min is None or not given(overrides, "epochs"):
        return
    if given(overrides, "budget_min"):
        raise ConfigError(
            f"budget_min={cfg.budget_min} and epochs={cfg.epochs} are both given: a budget "
            "chooses the epochs; give one of them"
        )
    log.info("epochs=%d given: the config's budget_min=%g is not used", cfg.epochs, cfg.budget_min)
    with read_write(cfg), open_dict(cfg):
        cfg.budget_min = None


def decide(
    cfg: DictConfig, run_dir: Path, overrides: list[str], log: logging.Logger
) -> Budget | None:
    """Before anything is planned: an earlier attempt's choice (applied to `cfg`: a resume never
    times again; `epochs` on the command line trains the run on), else `settle`. None: no choice
    recorded (a budget still to size, or none)."""
    settle_models(cfg, overrides, log)
    budget = recorded(run_dir, cfg.budget_min) if cfg.budget_min is not None else None
    if budget is not None and budget.model is not None:
        budget = replace(budget, model=listed(cfg, budget.model, run_dir))
    if budget is not None:
        apply(cfg, budget, further=given(overrides, "epochs"), log=log)
    else:
        settle(cfg, overrides, log)
    return budget


def entries(cfg: DictConfig) -> list[dict[str, Any]]:
    """`budget_models`' settings as plain values (interpolations resolved, as they are timed)."""
    return [OmegaConf.to_container(e.model, resolve=True) for e in cfg.budget_models or []]


def listed(cfg: DictConfig, settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The config's own entry that a record's settings name, value for value and of the same
    type, or its model when that already has them (the settings given on the command line): a
    run directory is untrusted input, it may only choose what the config holds."""
    model = OmegaConf.to_container(cfg.model, resolve=True) if cfg.model else {}
    for entry in [*entries(cfg), {k: model[k] for k in settings if k in model}]:  # or as given
        if entry.keys() == settings.keys() and all(
            type(settings[k]) is type(v) and settings[k] == v for k, v in entry.items()
        ):
            return entry
    off = "" if cfg.budget_models else " (a model given on the command line turns them off)"
    raise RunDirError(
        f"{run_dir} holds a budget record of a model this config's budget_models does not list"
        f"{off} ({model_overrides(settings).strip()}); rerun with the recorded command line or "
        "use another directory"
    )


def recorded(run_dir: Path, minutes: float) -> Budget | None:
    """The choice an earlier attempt of this run made (its status.json, else provenance.json), if
    any (None for another budget: the run's identity check names that difference); a record
    this package did not write is refused in one line (a run directory is untrusted input)."""
    found, where = (read_status(run_dir) or {}).get("budget"), STATUS
    if found is None:  # a status.json rewritten without it: provenance.json has the same record
        found, where = read_object(run_dir / PROVENANCE).get("budget"), PROVENANCE
    if found is None:
        return None
    try:
        budget = Budget(**found)
        counts = (budget.epochs, budget.eval_every)
        valid = (
            isinstance(budget.minutes, int | float)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in counts)
            and (budget.model is None or isinstance(budget.model, dict))
            and all(
                isinstance(k, str) and isinstance(v, int | float | str | bool)
                for k, v in (budget.model or {}).items()
            )
        )
    except TypeError:
        valid = False
    if not valid:
        raise RunDirError(
            f"{run_dir / where} holds a budget record this package did not write; "
            "move it away or choose another directory"
        )
    return budget if budget.minutes == minutes else None


def apply(
    cfg: DictConfig, budget: Budget, further: bool = False, log: logging.Logger | None = None
) -> None:
    """Resume with the recorded choice; `further` (an `epochs` on the command line): train the
    run on to those epochs, evaluated as chosen (as `epochs=N` trains any finished run further)."""
    with read_write(cfg), open_dict(cfg):
        if further and cfg.epochs != budget.epochs and log is not None:
            log.info(
                "epochs=%d given: training on the run budget_min=%g sized to %d epochs",
                cfg.epochs,
                budget.minutes,
                budget.epochs,
            )
        if not further:
            cfg.epochs = budget.epochs
        cfg.eval_every = budget.eval_every
        for name, value in (budget.model or {}).items():
            cfg.model[name] = value


def choose(
    epoch_s: float,
    eval_s: float,
    available_s: float,
    eval_every: int | None,
    max_eval_s: float,
    row_s: float = 0.0,
) -> tuple[int, int] | None:
    """The most epochs E (and the smallest eval_every K from the configured one up) such that E
    epochs, their ceil(E/K) evaluations and their bookkeeping take at most `available_s`,
    evaluations at most `max_eval_s` (unless one alone does). `row_s`: what each earlier epoch
    adds to an epoch's bookkeeping (results files and last.pt hold every row so far).
    `eval_every` None: once, at the end. None when not even one epoch fits."""

    def cost(e: int, k: int | None) -> float:
        return e * epoch_s + row_s * e * e / 2 + math.ceil(e / (k or e)) * eval_s

    def most_epochs(k: int | None) -> int:  # cost grows with e: bisect (a week's budget: 1e6+)
        lo, hi = 0, max(0, math.floor(available_s / epoch_s))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid, k) <= available_s else (lo, mid - 1)
        return lo

    k = eval_every
    for _ in range(10):  # widening K frees time for epochs, which may need a wider K: settles fast
        e = most_epochs(k)
        if e < 1:
            return None
        k_e = min(k or e, e)
        evals = math.ceil(e / k_e)
        if evals * eval_s <= max_eval_s or k_e == e:
            return e, k_e
        fit = max(1, math.floor(max_eval_s / eval_s))  # evaluations that fit their share
        k = max(k_e + 1, math.ceil(e / fit))
    return e, k_e


def check_models(cfg: DictConfig) -> None:
    """Build each of `budget_models` once, before any run directory is touched: settings this
    package's models refuse, or that contradict the data, are one line now, not after timing."""
    from fmnist import CLASSES
    from fmnist.models import build_model, check_fits_the_data, model_spec

    if cfg.budget_min is None:
        return
    for entry in entries(cfg):
        spec = model_spec(with_model(cfg, entry).model)
        check_fits_the_data(build_model(spec), spec, len(CLASSES))


def size_to_budget(
    cfg: DictConfig,
    run_dir: Path,
    log: logging.Logger,
    stop: StopOnSignal | None = None,
) -> Budget:
    """Time a throwaway copy of the run (of each of `budget_models` in turn, until one fits its
    `min_epochs`) and set `cfg.epochs`, `cfg.eval_every` (and the chosen model's settings) to fit
    `cfg.budget_min`; one line in the run's log says what was chosen and why, one more per
    model passed over. `stop`: a signal meanwhile stops the timing at its next step."""
    stop = stop or StopOnSignal()
    budget_s = cfg.budget_min * 60
    limit_s = min(TIMING_MAX_S, TIMING_SHARE * budget_s)
    every = None if evaluated_once(cfg) else cfg.eval_every
    start = time.perf_counter()
    candidates = [*(cfg.budget_models or []), None]  # None: `model` as set, the last resort
    for i, candidate in enumerate(candidates):
        settings = OmegaConf.to_container(candidate.model, resolve=True) if candidate else None
        t = time_model(with_model(cfg, settings) if settings else cfg, run_dir, limit_s, stop)
        timing_s = time.perf_counter() - start
        # before its first step the run is built again and warms up again (compiles, captures)
        setup_s = timing_s + t.build_s + max(0.0, t.warm_s - WARM_UP_STEPS * t.step_s)
        available = FILL * budget_s - setup_s
        chosen = choose(t.epoch_s, t.eval_s, available, every, EVAL_SHARE * budget_s, ROW_S)
        if candidate is None or (chosen is not None and chosen[0] >= candidate.min_epochs):
            break
        log.info(
            "budget_min=%g: budget_models[%d] (%s) is not trained here: %d of its epochs fit, "
            "fewer than its min_epochs=%d (an epoch %.2f s, an evaluation %.2f s)",
            cfg.budget_min, i, model_overrides(settings).strip(), chosen[0] if chosen else 0,
            candidate.min_epochs, t.epoch_s, t.eval_s,
        )  # fmt: skip
    if chosen is None:
        # timing grows with the budget (TIMING_SHARE of it): the shortest budget that fits
        need = (setup_s + t.epoch_s + t.eval_s) / max(FILL - (i + 1) * TIMING_SHARE, FILL / 2)
        models = f" ({i + 1} models)" if i else ""
        raise ConfigError(
            f"budget_min={cfg.budget_min} is too short here: timing{models} took {timing_s:.1f} s, one "
            f"epoch takes {t.epoch_s:.1f} s and an evaluation {t.eval_s:.1f} s; "
            f"give at least budget_min={math.ceil(need / 60 * 100) / 100}"
        )
    epochs, eval_every = chosen
    evals = math.ceil(epochs / eval_every)
    expected = setup_s + epochs * t.epoch_s + ROW_S * epochs**2 / 2 + evals * t.eval_s
    budget = Budget(
        minutes=float(cfg.budget_min),
        epochs=epochs,
        eval_every=eval_every,
        step_s=round(t.step_s, 5),
        epoch_s=round(t.epoch_s, 3),
        eval_s=round(t.eval_s, 3),
        timing_s=round(timing_s, 2),
        expected_s=round(expected, 1),
        model=settings,
    )
    ignored = f"; the config's epochs={cfg.epochs} is not used" if cfg.epochs != epochs else ""
    which = f"budget_models[{i}] ({model_overrides(settings).strip()}), " if settings else ""
    log.info(
        "budget_min=%g (%.0f s): %s%d epochs, evaluated every %d (%d evaluations): an epoch %.2f s "
        "(%d steps of %.1f ms), an evaluation %.2f s, timing %.1f s; expected %.0f s%s. "
        "The same run anywhere: %s",
        cfg.budget_min, budget_s, which, epochs, eval_every, evals, t.epoch_s, t.steps,
        t.step_s * 1000, t.eval_s, timing_s, budget.expected_s, ignored, budget.overrides(),
    )  # fmt: skip
    apply(cfg, budget)
    return budget
