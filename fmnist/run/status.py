"""`status.json`: how a run stands (running, completed, pruned, failed, interrupted), read from
any host, and what a sweeper or a rerun needs from it."""

from __future__ import annotations

import shutil
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist.run.files import read_json, write_json
from fmnist.run.locking import pid_alive

STATUS = "status.json"
ENDED_AS_PLANNED = ("completed", "pruned")  # nothing to resume (pruned: by a search)


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status, or None when it is missing or not a JSON object (never raises)."""
    try:
        status = read_json(Path(run_dir) / STATUS)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def finished(status: dict[str, Any] | None, epochs: int) -> bool:
    """Whether a run with this status has nothing left to train for `epochs`: completed them
    (or stopped early), or pruned (a pruned trial stays as its search left it)."""
    if not status:
        return False
    done = int(status.get("last_epoch") or 0) >= epochs or status.get("stopped_early")
    return (status.get("status") == "completed" and bool(done)) or status.get("status") == "pruned"


def objective(run_dir: str | Path) -> float | None:
    """What a sweeper optimizes for this run: the monitored value of its selected epoch, as its
    status.json records it (also for a completed run that a rerun skips); None if unknown."""
    return (read_status(run_dir) or {}).get("objective")


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's status.json (atomically) and return it."""
    status = read_status(run_dir) or {}
    status.update(fields)
    write_json(Path(run_dir) / STATUS, status)
    return status


def liveness(status: dict[str, Any] | None) -> str:
    """running, completed, failed, interrupted; `crashed` for a dead process still 'running'."""
    return where_running(status)[0]


def where_running(status: dict[str, Any] | None) -> tuple[str, str]:
    """(state, how we know) of a run, read from any host. A 'running' run on this host is alive
    if its pid is; on another host, Slurm's view of its job decides where there is one (ended:
    `crashed`); without one it stays `running`, said to be unverifiable from here."""
    if status is None:
        return "unknown", ""
    state = str(status.get("status", "unknown"))
    if state != "running":
        return state, ""
    host, job = status.get("host"), status.get("slurm_job")
    if host == socket.gethostname():
        return ("running", "") if pid_alive(status.get("pid")) else ("crashed", "")
    where = f"running on {host}" + (f" (Slurm job {job})" if job else "")
    if not job:
        return "running", f"{where}; cannot be checked from here"
    slurm = slurm_states([str(job)]).get(str(job))
    if slurm is None:
        return "running", f"{where}; Slurm does not answer here"
    if slurm in ("RUNNING", "PENDING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING"):
        return "running", where
    return "crashed", f"Slurm job {job} ended ({slurm}) on {host} while the run was 'running'"


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job (sacct, else squeue for jobs accounting does not know yet);
    {} where neither answers in time."""
    ids = ",".join(job_ids)
    queries = (
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ids],
        ["squeue", "-h", "-o", "%i|%T", "-j", ids],
    )
    for cmd in queries if job_ids else ():
        if shutil.which(cmd[0]) is None:
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = dict(line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)
        if done.returncode == 0 and found:
            return found
    return {}
