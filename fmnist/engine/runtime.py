"""Device, threads and seeding: the machine-facing settings of a run."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from fmnist.config import cpu_cores
from fmnist.cpu import NATIVE_BF16, cpu_flags
from fmnist.errors import ConfigError

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
        raise ConfigError(f"device={name} is invalid: no CUDA GPU here; use device=auto or cpu")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device=mps is invalid: no Apple GPU here; use device=auto or cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device={name} is invalid: {torch.cuda.device_count()} CUDA GPU(s) here")
    return torch.device(name)


def decide_bf16(
    setting: Any, device: torch.device, flags: set[str] | None = None
) -> tuple[bool, str]:
    """runtime.bf16 -> (on, why). `auto`: on only for a CPU with native bf16 instructions.

    Measured (README, docs/performance.md): a bn_cnn step in bf16 autocast took 0.56x the fp32 time
    on an AMD EPYC with AVX512-BF16, 1.5-1.7x on an Intel Xeon without it, and 1.1-1.3x on an H200
    (kernels this small gain nothing from bf16 on a GPU). `torch`'s own check answers True on
    CPUs that only emulate bf16, so the decision reads the CPU flags.
    """
    if setting is True or setting is False:
        return bool(setting), f"runtime.bf16={str(setting).lower()} (forced)"
    if device.type != "cpu":
        return False, f"runtime.bf16=auto: off on {device.type} (measured slower for these nets)"
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16 if f in flags]
    if native:
        return True, f"runtime.bf16=auto: on, the CPU has native bf16 ({', '.join(native)})"
    return False, "runtime.bf16=auto: off, the CPU has no native bf16 (no avx512_bf16 or amx_bf16)"


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without stalling the host.

    A plain `.to("cuda")` from pageable memory waits for the GPU to finish its queue; from pinned
    memory with `non_blocking` it is queued behind it, so the loop never waits for the GPU.
    """
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def configure(rt: DictConfig) -> int:
    """Thread count and denormal flushing; returns the threads used."""
    threads = rt.threads or cpu_cores()
    torch.set_num_threads(threads)
    if rt.flush_denormal:
        torch.set_flush_denormal(True)
    torch.autograd.set_detect_anomaly(bool(rt.get("detect_anomaly", False)))
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
