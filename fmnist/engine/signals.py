"""SIGINT and SIGTERM stop a run at the next batch boundary, after which it saves what it has."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stopped at a batch boundary after saving what it had."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class StopOnSignal:
    """A signal sets a flag the loop checks after each batch; a second one exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: leave signals alone
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nsignal {signum}: stopping after this batch (again to quit now)", file=sys.stderr)

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
