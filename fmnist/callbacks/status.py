"""`status.json`: running, completed, failed (with the reason) or interrupted. Always on."""

from __future__ import annotations

import os
import resource
import socket
import sys
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.rundir import now, write_status


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


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
            monitor=state.monitor,
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
