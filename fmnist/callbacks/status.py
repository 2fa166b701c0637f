"""`status.json`: running, completed, pruned (by a search), failed (with the reason) or
interrupted. Always on."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import psutil

from fmnist.callbacks.base import Callback, RunState
from fmnist.hparams import identity
from fmnist.run.status import now, write_status


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB); the current one where the OS keeps no
    peak for us (no `resource` module: Windows)."""
    try:
        import resource
    except ImportError:
        return round(psutil.Process().memory_info().rss / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def slurm_job_id() -> str | None:
    """This process's Slurm job (`1234_5` for an array task), or None outside Slurm."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class StatusCallback(Callback):
    def on_run_start(self, state: RunState) -> None:
        write_status(
            state.run_dir,
            status="running",
            run=state.name,
            started=now(),
            ended=None,
            last_epoch=state.start_epoch,
            epochs=state.cfg.epochs,
            budget=state.budget,
            error=None,
            hparams=state.hparams,
            identity=identity(state.cfg),
            monitor=state.monitor,
            pid=os.getpid(),
            host=socket.gethostname(),
            slurm_job=slurm_job_id(),
        )

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        write_status(state.run_dir, last_epoch=state.epoch)

    def on_run_end(self, state: RunState) -> None:
        final = state.history[-1] if state.history else {}
        write_status(
            state.run_dir,
            status=state.end_status,
            ended=now(),
            test_accuracy=final.get("test_accuracy"),
            best=state.best,
            objective=state.best.get("value"),
            stopped_early=state.should_stop,
            peak_rss_mb=peak_rss_mb(),
        )

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt)
        write_status(
            state.run_dir,
            status="interrupted" if interrupted else "failed",
            ended=now(),
            error={"type": type(exc).__name__, "message": str(exc)},
        )
