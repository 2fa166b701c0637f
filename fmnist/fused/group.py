"""Train a fused group: claim and build each member as `train(cfg)` would, then run the fused
loop for the members that start at the same epoch."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from fmnist.engine.run import check_config, prepare
from fmnist.engine.signals import StopOnSignal
from fmnist.fused.loop import FusedFit, Member, failure_kept
from fmnist.rundir import RunDirectory
from fmnist.state import RunState


def train_group(members: list[Member], enter: Any = None) -> None:
    """Train every member; each ends with `error` None or set. A signal (RunInterrupted) stops
    all of them after saving and propagates. `enter(member)`: a context the member's build runs
    in (the launcher sets Hydra's config to the member's)."""
    names = [m.name for m in members]
    try:
        with StopOnSignal() as stop:
            ready = []
            for index, m in enumerate(members):
                with enter(m) if enter else nullcontext(), failure_kept(m):
                    check_config(m.cfg)
                    m.directory = RunDirectory(m.cfg.output_dir).claim()
                    fused = {"members": names, "index": index}
                    run = prepare(m.cfg, m.directory, m.overrides, fused=fused)
                    if isinstance(run, RunState):
                        m.run = run
                        ready.append(m)
                stop.check()
            for start in sorted({m.run.start_epoch for m in ready}):  # resumed at one epoch
                FusedFit([m for m in ready if m.run.start_epoch == start], stop).run()
    finally:
        for m in members:
            if m.directory is not None:
                m.directory.release()
