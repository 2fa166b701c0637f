"""The pool launcher's slots: which GPU and which cores each job of a sweep gets, decided once
from the hardware and the settings (hydra.launcher.slots, jobs_per_device, cores_per_slot,
devices), each setting that cannot work refused in one line before any job starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hydra.errors import CompactHydraException

from fmnist.config import cpu_cores


@dataclass(frozen=True)
class Slot:
    index: int
    device: str  # "cpu" or "cuda:N"
    cpus: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "device": self.device, "cpus": list(self.cpus)}


def plan_slots(
    gpus: int, cores: list[int], slots: int | None, jobs_per_device: int, cores_per_slot: int | None
) -> tuple[list[Slot], str]:
    """The slots and why: `jobs_per_device` per GPU (the cores shared out among them), else
    disjoint sets of `cores_per_slot` cores (auto: 1 core up to 8 cores, then cores / 8).
    `slots` caps the number either way (more jobs on a GPU: `jobs_per_device`)."""
    if gpus:
        n = min(slots or gpus * jobs_per_device, gpus * jobs_per_device)
        share = max(1, len(cores) // n)
        out = [
            Slot(i, f"cuda:{i % gpus}", tuple(cores[(i * share) % len(cores) :][:share]))
            for i in range(n)
        ]
        why = f"{gpus} CUDA GPU(s) x {jobs_per_device} job(s) each, {share} core(s) per job"
        if slots and slots > n:
            why += f" (slots={slots} capped: more jobs on a GPU with jobs_per_device)"
        return out, why
    per = cores_per_slot or max(1, len(cores) // 8)
    n = min(slots or len(cores) // per, max(1, len(cores) // per))
    out = [Slot(i, "cpu", tuple(cores[i * per : (i + 1) * per])) for i in range(max(1, n))]
    why = f"no CUDA GPU: {len(cores)} cores in {len(out)} slot(s) of {per} core(s)"
    if slots and slots > len(out):
        why += f" (slots={slots} capped: a slot has {per} core(s))"
    return out, why


class PoolSettingError(CompactHydraException):
    """Pool settings that cannot work; one line, before any job starts."""


def check_settings(
    slots: Any, jobs_per_device: Any, cores_per_slot: Any, devices: Any = None
) -> None:
    for key, value in (("slots", slots), ("cores_per_slot", cores_per_slot)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PoolSettingError(
                f"hydra.launcher.{key}={value} is invalid: null or an integer >= 1"
            )
    if devices is not None and (not isinstance(devices, int) or devices < 0):
        raise PoolSettingError(
            f"hydra.launcher.devices={devices} is invalid: null (every visible GPU) or the "
            "number of GPUs to use, an integer >= 0 (0: cores only)"
        )
    if not isinstance(jobs_per_device, int) or jobs_per_device < 1:
        raise PoolSettingError(
            f"hydra.launcher.jobs_per_device={jobs_per_device} is invalid: an integer >= 1"
        )


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(cpu_cores()))


def gpus_to_use(devices: int | None) -> int:
    """`devices` checked against the GPUs this process sees (None: all of them; 0: none)."""
    if devices == 0:
        return 0
    import torch

    visible = torch.cuda.device_count()
    if devices is not None and devices > visible:
        raise PoolSettingError(
            f"hydra.launcher.devices={devices} is more than the {visible} CUDA GPU(s) "
            "visible here (CUDA_VISIBLE_DEVICES, nvidia-smi)"
        )
    return visible if devices is None else devices
