"""Device, threads and seeding: the machine-facing settings of a run."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """`auto`: cuda, else mps, else cpu. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from fmnist.config import ConfigError

        raise ConfigError(f"device={name} is invalid: no CUDA GPU here; use device=auto or cpu")
    return torch.device(name)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without stalling the host.

    A plain `.to("cuda")` from pageable memory waits for the GPU to finish its queue; from pinned
    memory with `non_blocking` it is queued behind it, so the loop never waits for the GPU.
    """
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Cores this job may use: cores / joblib's n_jobs, a submitit job's cpus_per_task, else all.

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
    return max(1, cores // (cores if n_jobs < 0 else int(n_jobs)))


def configure(rt: DictConfig) -> int:
    """Thread count and denormal flushing; returns the threads used."""
    threads = rt.threads or auto_threads()
    torch.set_num_threads(threads)
    if rt.flush_denormal:
        torch.set_flush_denormal(True)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
