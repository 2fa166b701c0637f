"""Train a fused group: claim and build each member as `train(cfg)` would, then `fit` the
members that start at the same epoch together (one fused compute step)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from fmnist.engine.fit import fit
from fmnist.engine.runner import check_config, prepare
from fmnist.engine.signals import StopOnSignal
from fmnist.engine.state import RunState
from fmnist.run.directory import RunDirectory, write_traceback

log = logging.getLogger("fmnist")


@dataclass
class Member:
    """One job of the group: its composed (resolved) config, its Hydra node, and how it ended."""

    cfg: DictConfig
    overrides: list[str]
    name: str
    hydra_cfg: Any = None
    run: RunState | None = None
    setup_error: BaseException | None = None  # failed before its run was built

    @property
    def error(self) -> BaseException | None:
        """None: completed (or already complete before)."""
        return self.setup_error or (self.run.error if self.run is not None else None)


def train_group(members: list[Member]) -> None:
    """Train every member; each ends with `error` None or set. A signal (RunInterrupted) stops
    all of them after saving and propagates."""
    names = [m.name for m in members]
    directories: list[RunDirectory] = []
    try:
        with StopOnSignal() as stop:
            ready = []
            for index, m in enumerate(members):
                directory = RunDirectory(m.cfg.output_dir)
                try:
                    check_config(m.cfg)
                    directories.append(directory.claim())
                    fused = {"members": names, "index": index}
                    run = prepare(
                        m.cfg, directory, m.overrides, m.hydra_cfg, stop=stop, fused=fused
                    )
                except Exception as exc:  # noqa: BLE001  (a member that cannot start fails alone)
                    m.setup_error = exc
                    if directory in directories:  # its own directory: the traceback goes there
                        write_traceback(directory.path)
                    log.error("%s failed: %s: %s", m.name, type(exc).__name__, exc)
                    continue
                if isinstance(run, RunState):
                    m.run = run
                    ready.append(run)
            stop.check()
            try:
                for start in sorted({r.start_epoch for r in ready}):  # resumed at one epoch
                    fit([r for r in ready if r.start_epoch == start], stop)
            finally:
                stop.progressed = any(r.progressed for r in ready)
    finally:
        for directory in directories:
            directory.release()
