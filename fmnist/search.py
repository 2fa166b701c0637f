"""Hyperparameter search on Optuna: the study on disk, the search space from YAML, the pruner,
and what a finished trial's run directory says about it.

The sweeper (`hydra_plugins/fmnist_plugins/optuna_sweeper.py`) asks trials and launches them as
ordinary sweep jobs; each job reports its objective after every epoch to the same study
(`fmnist.callbacks.pruning`) and stops when the pruner says so. Both sides meet only through the
storage, so trials may run in the sweep's process, in joblib workers or on Slurm nodes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import CompactHydraException, OverrideParseException
from hydra.utils import instantiate
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

log = logging.getLogger("fmnist")

JOURNAL = "optuna.journal"  # the study's default file in the sweep directory
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # count toward n_trials
PRUNERS = {  # name -> (class, settings); the settings are Optuna's defaults unless noted
    # no pruning until 3 trials have finished, nor in the first epoch (its noise is largest);
    # a trial's steps are its epochs, 1-based, so warm-up 2 = steps 0 and 1
    "median": (optuna.pruners.MedianPruner, {"n_startup_trials": 3, "n_warmup_steps": 2}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {}),
    "hyperband": (optuna.pruners.HyperbandPruner, {}),
    "none": (optuna.pruners.NopPruner, {}),
}


class SearchError(CompactHydraException):
    """A search that cannot start (bad space, storage, pruner): Hydra prints this one line."""


@dataclass(frozen=True)
class SearchSpace:
    """`distributions`: what Optuna chooses; `fixed`: overrides every trial gets as they are."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


def search_space(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """`hydra.sweeper.params` plus the command line's overrides, in Hydra's sweep syntax:
    `choice(a, b)` or `a,b` (categorical), `range(1, 10, 2)` (int or float steps),
    `interval(lo, hi)` (float; `tag(int, ...)` for integers, `tag(log, ...)` for a log scale)."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as exc:
        raise SearchError(f"search space: {one_line(exc)}") from None
    distributions: dict[str, BaseDistribution] = {}
    fixed = []
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        try:
            distributions[key] = distribution(override.value())
        except (ValueError, TypeError) as exc:
            raise SearchError(f"search space: {key}: {exc}") from None
    if not distributions:
        raise SearchError(
            "search space is empty: give hydra.sweeper.params (conf/hparams_search/optuna.yaml) "
            "or a sweep on the command line, e.g. 'lr=tag(log, interval(0.0001, 0.1))'"
        )
    return SearchSpace(distributions, fixed)


def distribution(sweep: Any) -> BaseDistribution:
    """One Hydra sweep as an Optuna distribution; ValueError saying what is wrong."""
    tags = set(getattr(sweep, "tags", set()) or set())
    unknown = tags - {"log", "int"}
    if unknown:
        raise ValueError(f"unknown tag {', '.join(sorted(unknown))} (log and int are known)")
    log_scale = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        values = list(sweep.list)
        if not values:
            raise ValueError("choice() needs at least one value")
        if tags:
            raise ValueError("choice() takes no tags; use interval() or range() for a scale")
        return CategoricalDistribution(values)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        count = math.ceil((stop - start) / step) if step else 0
        if count < 1:
            raise ValueError(f"range({start}, {stop}, {step}) is empty")
        last = start + step * (count - 1)
        if all(isinstance(v, int) for v in (start, stop, step)):
            low, high = sorted((start, last))
            return IntDistribution(low, high, step=abs(step), log=log_scale)
        low, high = sorted((float(start), round(float(last), 12)))
        return FloatDistribution(low, high, step=abs(float(step)))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ValueError(f"interval({low}, {high}): the low end must be below the high end")
        if log_scale and low <= 0:
            raise ValueError(f"interval({low}, {high}) on a log scale must be above 0")
        if "int" in tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise ValueError(f"{type(sweep).__name__} is not a search space (choice, range or interval)")


def override(key: str, value: Any) -> str:
    """A sampled value as a Hydra override that parses back to the same value."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's storage: by default a journal file in the sweep directory."""
    return storage or str(sweep_dir / JOURNAL)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A URL (sqlite:///..., postgresql://...) opens Optuna's RDB storage; a path, a journal
    file: one append-only log under a file lock, which Optuna documents for several processes
    writing at once, over NFS too (SQLite is not meant for that; trials write from their own
    processes under joblib or Slurm)."""
    try:
        if "://" in url:
            return optuna.storages.RDBStorage(url)
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy, OS and Optuna errors alike)
        raise SearchError(f"hydra.sweeper.storage={url}: cannot open it: {one_line(exc)}") from None


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """`median` (default), `successive_halving`, `hyperband`, `none`, or {_target_: ...}."""
    if spec is None:
        spec = "none"
    if isinstance(spec, optuna.pruners.BasePruner):  # Hydra instantiates the sweeper's nodes
        return spec
    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise SearchError(
                f"hydra.sweeper.pruner={spec} is unknown: {', '.join(PRUNERS)}, "
                "or a mapping with _target_ (e.g. optuna.pruners.PercentilePruner)"
            )
        cls, settings = PRUNERS[spec]
        return cls(**settings)
    try:
        pruner = instantiate(spec)
    except Exception as exc:  # noqa: BLE001  (whatever the target raises)
        raise SearchError(f"hydra.sweeper.pruner: {one_line(exc)}") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise SearchError(f"hydra.sweeper.pruner: {type(pruner).__name__} is not an Optuna pruner")
    return pruner


def make_sampler(spec: Any, asked: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of {_target_: ...}; a seeded one continuing a study with `asked` trials gets
    seed + asked, or it would propose the trials of the first run again."""
    if spec is None:
        return optuna.samplers.TPESampler()  # Optuna's default
    if isinstance(spec, dict) and spec.get("seed") is not None and asked:
        spec = {**spec, "seed": int(spec["seed"]) + asked}
    try:
        sampler = instantiate(spec)
    except Exception as exc:  # noqa: BLE001
        raise SearchError(f"hydra.sweeper.sampler: {one_line(exc)}") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise SearchError(f"hydra.sweeper.sampler: {type(sampler).__name__} is not a sampler")
    return sampler


def open_study(
    url: str, name: str, direction: str, sampler: Any = None, pruner: Any = None
) -> optuna.Study:
    """The study `name` in `url`, created on the first run and continued by reruns."""
    if direction not in ("maximize", "minimize"):
        raise SearchError(f"hydra.sweeper.direction={direction}: maximize or minimize")
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        direction=direction,
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trials are counted
        pruner=make_pruner(pruner),
        load_if_exists=True,
    )
    study.sampler = make_sampler(sampler, len(study.get_trials(deepcopy=False)))
    if study.direction.name.lower() != direction:
        raise SearchError(
            f"study {name} in {url} was created to {study.direction.name.lower()}, not to "
            f"{direction}: use another hydra.sweep.dir or hydra.sweeper.study_name"
        )
    return study


def load_trial(url: str, name: str, number: int, pruner: Any) -> optuna.Trial:
    """A running trial of the study, as the job that trains it reports to it (from any process).
    Optuna hands trials out from `ask`; a trial asked elsewhere is rebuilt from its id."""
    study = optuna.load_study(
        study_name=name, storage=open_storage(url), pruner=make_pruner(pruner)
    )
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == number:
            return optuna.Trial(study, frozen._trial_id)  # noqa: SLF001  (no public lookup)
    raise SearchError(f"trial {number} of study {name} in {url} is not running")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the search loop (the sweeper's `sweep`) -------------------------------------------------


@dataclass
class Settings:
    """hydra.sweeper.* (conf/hparams_search/optuna.yaml documents each)."""

    direction: str
    study_name: str
    storage: str | None
    n_trials: int
    n_jobs: int
    sampler: Any
    pruner: Any
    params: dict[str, Any] | None


class Search:
    """Ask up to `n_jobs` trials, launch them as one batch of sweep jobs, tell the study how each
    ended (from its run directory), until the study holds `n_trials` finished trials. Trials a
    killed search left running are launched again first: their jobs resume from checkpoints."""

    def __init__(self, settings: Settings, launcher: Any, config: Any, validate: Any):
        self.settings, self.launcher, self.config = settings, launcher, config
        self.validate = validate  # the sweeper's validate_batch_is_legal: composes the overrides
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.url = storage_url(settings.storage, self.sweep_dir)

    def run(self, arguments: list[str]) -> optuna.Study:
        from fmnist.locking import FileLock, LockHeld

        s = self.settings
        if s.n_trials < 1 or s.n_jobs < 1:
            raise SearchError(
                f"hydra.sweeper.n_trials={s.n_trials}, n_jobs={s.n_jobs}: both must be >= 1"
            )
        if self.config.hydra.launcher.get("wait") is False:
            raise SearchError(
                "an Optuna search waits for its trials: drop hydra.launcher.wait=false"
            )
        space = search_space(s.params, arguments)
        make_pruner(s.pruner), make_sampler(s.sampler)  # refused here, before any file is written
        self.validate([self.job_overrides(space, probe(space), 0)])  # a bad key fails here
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.sweep_dir / ".search.lock")
        try:
            lock.acquire(wait_s=0)
        except LockHeld as held:
            raise SearchError(
                f"another search runs in {self.sweep_dir} (process {held.owner}); wait for it"
            ) from None
        try:
            return self.search(space)
        finally:
            lock.release()

    def search(self, space: SearchSpace) -> optuna.Study:
        from omegaconf import OmegaConf

        s = self.settings
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        study = open_study(self.url, s.study_name, s.direction, s.sampler, s.pruner)
        pending = [
            optuna.Trial(study, t._trial_id)  # noqa: SLF001  (rebuild a running trial)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ]
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if finished or pending:
            log.info(
                "continuing study %s in %s: %d trials finished, %d cut short (resumed first)",
                s.study_name,
                self.url,
                finished,
                len(pending),
            )
        while True:
            batch, pending = pending[: s.n_jobs], pending[s.n_jobs :]
            while len(batch) < s.n_jobs and finished + len(batch) + len(pending) < s.n_trials:
                batch.append(study.ask(space.distributions))
            if not batch:
                break
            jobs = [self.job_overrides(space, t.params, t.number) for t in batch]
            returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
            for trial, job_return in zip(batch, returns, strict=True):
                self.tell(study, trial, job_return)
            finished += len(batch)
        self.report(study)
        return study

    def job_overrides(self, space: SearchSpace, params: dict[str, Any], number: int) -> list[str]:
        return [
            *space.fixed,
            *(override(k, v) for k, v in params.items()),
            f"trial.number={number}",
            f"trial.study={quoted(self.settings.study_name)}",
            f"trial.storage={quoted(self.url)}",
            f"hydra.sweep.subdir={trial_dir(number)}",  # one directory per trial, whatever its values
        ]

    def tell(self, study: optuna.Study, trial: optuna.Trial, job_return: Any) -> None:
        from hydra.core.utils import JobStatus

        from fmnist.rundir import read_status
        from fmnist.sweep import job_exception

        run_dir = self.sweep_dir / trial_dir(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        status = read_status(run_dir) or {}
        state = status.get("status")
        if job_return.status == JobStatus.FAILED or state not in ("completed", "pruned"):
            if state == "interrupted":  # stopped by a signal: a rerun resumes it
                return
            exc = job_exception(job_return)
            reason = one_line(exc) if exc else f"the run ended {state or 'without a status'}"
            trial.set_user_attr("error", reason)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, reason)
        elif state == "pruned":
            trial.set_user_attr("pruned", status.get("stopped_early"))
            study.tell(trial, state=TrialState.PRUNED)
        elif status.get("objective") is None:
            trial.set_user_attr("error", "no objective: the run had no validation split")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(status["objective"]))

    def report(self, study: optuna.Study) -> None:
        """optimization_results.yaml (best parameters and value) and one line on the console."""
        from omegaconf import OmegaConf

        counts = {
            state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        done = counts["complete"]
        best = study.best_trial if done else None
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.url,
            "direction": study.direction.name.lower(),
            "trials": counts,
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
        }
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        if best is None:
            raise SearchError(f"no trial completed ({summary}); see the sweep summary for reasons")
        print(
            f"Best value: {best.value:.4f} (trial {best.number}, {summary}); "
            f"parameters: {dict(best.params)}",
            flush=True,
        )


def trial_dir(number: int) -> str:
    return f"trial_{number:03d}"


def probe(space: SearchSpace) -> dict[str, Any]:
    """One point of the space (each lowest value or first choice), to compose before asking."""
    point = {}
    for key, dist in space.distributions.items():
        point[key] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
    return point


def quoted(text: str) -> str:
    """A string as a quoted Hydra override value (paths and URLs hold ':' and '/')."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
