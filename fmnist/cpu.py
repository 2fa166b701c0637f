"""What this machine's CPU is: its model name and feature flags. Torch-free, so that reading a
run's record (fmnist-compare) does not import torch."""

from __future__ import annotations

import platform
from pathlib import Path

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # oneDNN emulates bf16 elsewhere, and slower than fp32


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU's name (/proc/cpuinfo's model name, else what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
