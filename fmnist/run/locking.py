"""A file lock the OS drops when its process dies, and process liveness, on every OS.

`fcntl.flock` where it exists (Linux, macOS), `msvcrt.locking` on Windows, and elsewhere an
exclusive side file naming its owner, which is free again once that owner is dead. The lock file
holds "<pid> <host>" of its holder, so a reader can name who holds it without taking it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import psutil

try:
    import fcntl
except ImportError:  # Windows, or a platform without it
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

RETRY_S = 0.5  # a reader probing the lock holds it for microseconds: a claimer retries this long


class LockHeld(OSError):
    """Another live process holds the lock; `owner` is what its lock file says ("pid host")."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is held by {owner}")
        self.owner = owner


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid runs on this host (psutil: any OS, no /proc needed)."""
    try:
        return psutil.pid_exists(int(pid))  # type: ignore[call-overload]
    except (ValueError, TypeError, OverflowError):
        return False


def children(pid: int) -> list[int]:
    """Child processes, recursively; empty where the OS will not say (no /proc, no rights)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except (psutil.Error, OSError):
        return []


def _try_lock(fd: int, shared: bool = False) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            os.lseek(fd, 0, 0)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    return True  # neither: the side file below is the lock


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, 0, 0)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class FileLock:
    """An exclusive lock on `path`, held by this object until `release` or the process's end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None
        self._side: Path | None = None  # the fallback's exclusive side file

    def acquire(self, wait_s: float = RETRY_S) -> None:
        """Take the lock, retrying for `wait_s`; LockHeld naming the holder if it stays taken."""
        if self.fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + wait_s
        while not (_try_lock(fd) and self._take_side_file()):
            if time.monotonic() >= deadline:
                owner = os.pread(fd, 64, 0) if hasattr(os, "pread") else b""
                os.close(fd)
                raise LockHeld(self.path, owner.decode(errors="replace").strip() or "unknown")
            time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def _take_side_file(self) -> bool:
        if fcntl is not None or msvcrt is not None:
            return True
        side = self.path.with_name(self.path.name + ".held")
        try:
            os.close(os.open(side, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            pid = holder_pid(self.path)
            if pid is not None and pid_alive(pid):
                return False
            side.unlink(missing_ok=True)  # its holder is dead: the claim is free
            return False  # retried at once by the loop
        self._side = side
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        if self._side is not None:
            self._side.unlink(missing_ok=True)
            self._side = None
        with contextlib.suppress(OSError):
            _unlock(self.fd)
        os.close(self.fd)
        self.fd = None


def holder_pid(path: str | Path) -> int | None:
    """The pid the lock file names (whether or not it still holds the lock)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def holder(path: str | Path) -> int | None:
    """The pid holding the lock now, or None when nobody does. Probes with a shared lock for a
    moment: a process claiming it at that instant retries (`RETRY_S`) instead of being refused."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None or msvcrt is not None:
            free = _try_lock(fd, shared=True)
            if free:
                _unlock(fd)
                return None
            return holder_pid(path)
        side = path.with_name(path.name + ".held")
        pid = holder_pid(path)
        return pid if side.exists() and pid is not None and pid_alive(pid) else None
    finally:
        os.close(fd)
