"""Where a run's numbers came from: code, libraries, hardware, command. Written at run start.

`provenance.json` answers "which code produced 0.9464?": the git commit and whether the tree had
uncommitted changes (their diff saved beside it), versions, CPU and GPU, threads, command line.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.config import cpu_cores
from fmnist.cpu import NATIVE_BF16, cpu_flags, cpu_model
from fmnist.paths import PACKAGE, checkout
from fmnist.run.files import read_json, write_json, write_text

if TYPE_CHECKING:
    import torch

PROVENANCE = "provenance.json"
PROVENANCE_DIFF = "provenance.diff"

SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", *NATIVE_BF16)  # change speed or numerics


def _git(*args: str) -> str | None:
    source = checkout()
    if source is None:  # an installed wheel: no git, even if site-packages sits inside a repo
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[dict[str, Any], str]:
    """({commit, dirty}, the uncommitted diff or ""); commit None outside a git checkout."""
    commit, source = _git("rev-parse", "HEAD"), str(checkout() or PACKAGE)
    if commit is None:
        return {"commit": None, "dirty": None, "source": source}, ""
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    diff = (_git("diff", "HEAD") or "") if status.strip() else ""
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "source": source}, diff


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect(
    device: torch.device, threads: int, overrides: list[str], **extra: Any
) -> tuple[dict, str]:
    """The provenance record and the uncommitted diff (empty when the tree is clean)."""
    import torch  # here, not at the top: fmnist-compare reads records without torch

    git, diff = git_state()
    flags = cpu_flags()
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    record = {
        "git": git,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "overrides": list(overrides),
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torchvision": _version("torchvision"),
            "hydra-core": _version("hydra-core"),
            "omegaconf": _version("omegaconf"),
            "numpy": _version("numpy"),
            "fmnist": _version("fmnist"),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
        },
        "hardware": {
            "device": str(device),
            "gpu": gpu,
            # which physical GPUs "cuda:0..." are here (the pool launcher gives each slot its own)
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cpu": cpu_model(),
            "cpu_flags": {f: f in flags for f in SPEED_FLAGS},
            "cores": cpu_cores(),
            "threads": threads,
            "platform": platform.platform(),
        },
        "hostname": socket.gethostname(),
        **extra,
    }
    return record, diff


def short(record: dict[str, Any] | None) -> str:
    """The commit as people quote it: 1a2b3c4, with +dirty when there were uncommitted changes."""
    git = (record or {}).get("git") or {}
    commit = git.get("commit")
    if not commit:
        return "no-git"
    return commit[:7] + ("+dirty" if git.get("dirty") else "")


def as_markdown(record: dict[str, Any]) -> str:
    """For TensorBoard's text tab and the model card."""
    hw, v = record.get("hardware", {}), record.get("versions", {})
    flags = ", ".join(f for f, on in (hw.get("cpu_flags") or {}).items() if on) or "none"
    lines = [
        f"- code: `{short(record)}` ({(record.get('git') or {}).get('source')})",
        f"- command: `{' '.join(record.get('command', []))}`",
        f"- device: {hw.get('device')} {hw.get('gpu') or ''}; CPU: {hw.get('cpu')} ({flags}); "
        f"{hw.get('threads')} threads of {hw.get('cores')} cores",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- host: {record.get('hostname')}, started {record.get('started')}",
    ]
    if record.get("bf16"):
        lines.append(f"- bf16: {record['bf16']}")
    return "\n".join(lines)


def write_provenance(run_dir: Path, record: dict[str, Any], diff: str, started: str) -> dict:
    """provenance.json (and provenance.diff when the tree had uncommitted changes).

    A resumed run keeps what earlier attempts recorded under `earlier_attempts`.
    """
    earlier = read_provenance(run_dir)
    record = {**record, "started": started}
    if earlier is not None:
        previous = earlier.pop("earlier_attempts", [])
        record["earlier_attempts"] = [*(previous if isinstance(previous, list) else []), earlier]
    if diff:
        write_text(run_dir / PROVENANCE_DIFF, diff)
        record["git"] = {**record.get("git", {}), "diff_file": PROVENANCE_DIFF}
    write_json(run_dir / PROVENANCE, record)
    return record


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = read_json(Path(run_dir) / PROVENANCE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
