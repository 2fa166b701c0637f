"""The resolvers conf/ uses (`${fmnist.NAME:...}`), registered on import: every entry point that
composes a config imports this module (fmnist/main.py, fmnist/api.py, the tests).

They decide at composition what a run then reads from its config like any other value.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from fmnist.config import cpu_cores
from fmnist.hparams import job_dirname
from fmnist.metrics import direction
from fmnist.paths import data_root

# Unique per process, cached in the config so every job of a sweep sees the same value:
# two sweeps started in the same second get different directories.
OmegaConf.register_new_resolver("fmnist.pid", lambda: os.getpid(), use_cache=True, replace=True)

OmegaConf.register_new_resolver("fmnist.data_root", data_root, replace=True)


def auto_threads() -> int:
    """`runtime.threads` of a job, decided when its config is composed; the run then reads it
    from its config like any other value. Cores this job may use: cores / the jobs joblib runs
    at once (its n_jobs, or fewer when an Optuna search launches fewer), a submitit job's
    cpus_per_task, else all.

    Set in every job: oversubscribed cores (2 jobs x 2 threads on 2 cores) run ~17x slower.
    """
    cores = cpu_cores()
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except ValueError:  # not inside a Hydra job
        return cores
    if launcher.get("cpus_per_task"):
        return max(1, min(cores, int(launcher.cpus_per_task)))
    n_jobs = launcher.get("n_jobs")
    if not n_jobs:
        return cores
    at_once = cores if n_jobs < 0 else int(n_jobs)
    sweeper = HydraConfig.get().sweeper
    if "n_trials" in sweeper:  # an Optuna search launches n_jobs at once (null: 1 in batches)
        at_once = min(at_once, sweeper.get("n_jobs") or 1)
    return max(1, cores // at_once)


OmegaConf.register_new_resolver("fmnist.job_threads", auto_threads, replace=True)


def sweep_dir() -> str | None:
    """A multirun's directory, where its jobs' trackers group them; None for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra job
        return None
    return str(Path(hydra.sweep.dir).absolute()) if hydra.mode == RunMode.MULTIRUN else None


OmegaConf.register_new_resolver("fmnist.sweep_dir", sweep_dir, replace=True)

OmegaConf.register_new_resolver(
    "fmnist.direction",
    lambda monitor: "maximize" if direction(monitor) == "max" else "minimize",
    replace=True,
)

# a sweep job's directory name: its overrides but those the schema leaves out (`named=False`)
OmegaConf.register_new_resolver("fmnist.dirname", job_dirname, replace=True)
