"""SIGINT and SIGTERM stop a run at the next batch boundary, after which it saves what it has."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

ECHO_S = 2.0  # a signal of the other kind this soon after the first is the same request
# submitit's signal ahead of a Slurm time limit or preemption: the run saves, then submitit's own
# handler requeues the job (fmnist/sweeps/slurm.py)
REQUEUE = getattr(signal, "SIGUSR2", None)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stopped at a batch boundary after saving what it had."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum

    def __reduce__(self) -> tuple[type, tuple[int]]:  # a sweep worker sends it to its parent
        return RunInterrupted, (self.signum,)


def stopped_by() -> int | None:
    """The signal that stopped an earlier run of this process, if any. A stopped run leaves its
    handler installed (`StopOnSignal.__exit__`), so the handler's owner is the one record."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return owner.signum if isinstance(owner, StopOnSignal) else None


def check_not_stopped() -> None:
    """A sweep worker that was told to stop takes no further job (it would run to the end)."""
    signum = stopped_by()
    if signum is not None:
        raise RunInterrupted(signum)


class StopOnSignal:
    """A signal sets a flag the loop checks after each batch; a second one exits at once.

    One exception: Ctrl-C in a terminal reaches every process of a sweep, and the sweep's parent
    passes the stop on to its workers as SIGTERM (it cannot tell a terminal's SIGINT from a
    `kill -INT`). A worker therefore takes a SIGTERM just after a SIGINT, or the reverse, as the
    same request; the same signal twice, or any signal later, still quits at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        # set by whoever trains under it: whether this process finished an epoch (a Slurm time
        # limit's requeue then does not count against max_num_timeout)
        self.progressed = False
        self._at = 0.0
        self._echoed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers: leave signals alone
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        if REQUEUE is not None and callable(signal.getsignal(REQUEUE)):  # a submitit job
            self._previous[REQUEUE] = signal.signal(REQUEUE, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            echo = signum != self.signum and time.monotonic() - self._at < ECHO_S
            if echo and not self._echoed:
                self._echoed = True
                return
            os._exit(128 + signum)
        self.signum, self._at = signum, time.monotonic()
        print(f"\nsignal {signum}: stopping after this batch (again to quit now)", file=sys.stderr)

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def __exit__(self, *exc: Any) -> None:
        if self.signum is not None:
            requeue = self._previous.get(REQUEUE) if self.signum == REQUEUE else None
            if callable(requeue):  # saved: now submitit requeues the job and ends this process
                if self.progressed:
                    forgive_time_limit(requeue)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Slurm's kill of the old attempt
                requeue(self.signum, None)
            return  # stopped: this process is on its way out, and another signal still quits now
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def forgive_time_limit(requeue: Any) -> None:
    """submitit requeues a job that reached its time limit at most `max_num_timeout` times; a
    slice that finished an epoch made progress, so its requeue is not counted: the cap stops only
    jobs whose slices make none (a 12-epoch job in 1-epoch slices finishes by itself). Reaches
    into submitit's signal handler (`_delayed._timeout_countdown`); without it, counts as before."""
    handler = getattr(requeue, "__self__", None)
    delayed = getattr(handler, "_delayed", None)
    if isinstance(getattr(delayed, "_timeout_countdown", None), int) and handler.has_timed_out():
        delayed._timeout_countdown += 1  # submitit takes 1 off for this time limit
