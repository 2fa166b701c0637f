"""One run directory as a process uses it: the lock it holds on it, the run's own logger and
log file, and the files Hydra would write there (.hydra/, the traceback of a failure)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from fmnist.errors import RunDirError
from fmnist.run.files import write_text
from fmnist.run.locking import FileLock, LockHeld, holder

LOCK = ".owner.lock"
LOG = "train.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class RunDirectory:
    """The lock this process holds on a run directory from `claim` to `release` (the OS drops it
    if the process dies), and the run's logger meanwhile: its records go to this directory's
    train.log and on to the console, never into another run's file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(self.path / LOCK)
        self._handler: logging.Handler | None = None
        # not registered with logging.getLogger: it lives as long as this object
        self.log = logging.Logger(f"fmnist.run.{self.path.name}")
        self.log.parent = logging.getLogger("fmnist")
        self.log.setLevel(logging.INFO)  # its train.log has every line, however logging is set up

    def claim(self) -> RunDirectory:
        """Take the directory; a second process is refused at once with the owner's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise RunDirError(
                f"{self.path} is in use by process {held.owner}; "
                "wait for it or choose another directory"
            ) from None
        return self

    def open_log(self) -> logging.Logger:
        """From now until `release`, this run's records are appended to its train.log too."""
        if self._handler is None:
            self._handler = logging.FileHandler(self.path / LOG, mode="a")
            self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
            self.log.addHandler(self._handler)
        return self.log

    def release(self) -> None:
        if self._handler is not None:
            self.log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        self._lock.release()

    def __enter__(self) -> RunDirectory:
        return self.claim()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def owner(run_dir: str | Path) -> int | None:
    """The pid holding the directory now, or None when nobody does (looking takes no claim)."""
    return holder(Path(run_dir) / LOCK)


def write_hydra_files(run_dir: Path, task: Any, hydra_cfg: Any) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them (what `resume=`
    reads), but only once this process owns the directory (Hydra's own saving is off).
    `hydra_cfg`: the job's Hydra node (None: not a Hydra job, nothing to write)."""
    from omegaconf import OmegaConf

    if hydra_cfg is None:
        return
    task = OmegaConf.masked_copy(task, [k for k in task if k != "hydra"])
    folder = run_dir / ".hydra"
    write_text(folder / "config.yaml", OmegaConf.to_yaml(task))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


def write_traceback(run_dir: Path) -> Path:
    """Append the current exception's traceback to the run's own log file (not the console).

    Hydra 1.3 leaves a failed job's own log empty, so the engine writes it here.
    """
    path = Path(run_dir) / LOG
    with path.open("a") as handle:
        handle.write(traceback.format_exc())
    return path
