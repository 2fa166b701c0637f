"""`status.json`: running, completed, failed (with the reason) or interrupted. Always on."""

from __future__ import annotations

import os
import resource
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.io import read_json, write_json

STATUS_FILE = "status.json"


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stopped at a batch boundary after saving what it had."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's status.json (atomically) and return it."""
    status = read_status(run_dir) or {}
    status.update(fields)
    write_json(Path(run_dir) / STATUS_FILE, status)
    return status


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
            error=None,
            hparams=state.hparams,
            pid=os.getpid(),
            host=socket.gethostname(),
        )

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        write_status(state.run_dir, last_epoch=state.epoch)

    def on_run_end(self, state: RunState) -> None:
        final = state.history[-1] if state.history else {}
        write_status(
            state.run_dir,
            status="completed",
            ended=now(),
            test_accuracy=final.get("test_accuracy"),
            best=state.best,
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
