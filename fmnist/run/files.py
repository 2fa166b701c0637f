"""Atomic file writes: a crash leaves the old file or the new one, never half of either.

Named `files`, not `io`, so it never shadows the standard library's module.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file in the same directory, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask says
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one directory
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = os_error(exc)
        if cause is not None and cause is not exc:  # torch.save wraps a full disk in RuntimeError
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise


def os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc` (itself, its cause or its context), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def write_text(path: str | Path, text: str) -> None:
    atomic_write(Path(path), lambda h: h.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: str | Path, obj: Any) -> None:
    import torch  # here: reading and writing json never needs it

    atomic_write(Path(path), lambda h: torch.save(obj, h))


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file; {} when it is missing, unreadable or not an object."""
    try:
        found = read_json(path)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
