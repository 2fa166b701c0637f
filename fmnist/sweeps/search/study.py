"""The study on disk (a journal file, or any Optuna storage URL), its sampler and pruner, and
a running trial opened from the process that trains it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from optuna.trial import TrialState

from fmnist.sweeps.search.space import SearchError, one_line

JOURNAL = "optuna.journal"  # the study's default file in the sweep directory
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # count toward n_trials
PRUNERS = {  # name -> (class, settings); the settings are Optuna's defaults unless noted
    # no pruning until 3 trials have finished, nor in the first epoch (its noise is largest);
    # a trial's steps are its epochs, 1-based, so warm-up 2 = steps 0 and 1 (a budgeted trial's
    # are percents of its schedule, and its first evaluation is never pruned: search/report.py)
    "median": (optuna.pruners.MedianPruner, {"n_startup_trials": 3, "n_warmup_steps": 2}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {}),
    "hyperband": (optuna.pruners.HyperbandPruner, {}),
    "none": (optuna.pruners.NopPruner, {}),
}


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


def load_trial(url: str, name: str, number: int, pruner: Any) -> optuna.Trial | None:
    """A running trial of the study, as the job that trains it reports to it (from any process);
    None when the trial has finished (a run retrained by hand after its search told the study).
    Optuna hands trials out from `ask`; a trial asked elsewhere is rebuilt from its id."""
    study = optuna.load_study(
        study_name=name, storage=open_storage(url), pruner=make_pruner(pruner)
    )
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == number:
            return optuna.Trial(study, frozen._trial_id)  # noqa: SLF001  (no public lookup)
    return None
