"""Weights & Biases: one W&B run per job (each job finishes its own: a multirun's jobs are never
merged), grouped by the sweep, with the same metrics per epoch as results.csv.
`"callbacks=[default,wandb]"` (conf/callbacks/wandb.yaml).

Offline by default: no network, no login prompt, stdin never read; the run's files go under
`<run dir>/wandb/`, ready for `wandb sync`. The W&B run id is kept in the run directory, so a
resumed run (kill -9, then the same command) continues the same W&B run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.callbacks.mlflow import metric_rows
from fmnist.errors import ConfigError
from fmnist.run.files import read_object, write_json

RECORD = "wandb.json"  # in the run directory: {run_id, logged}: the last epoch sent
MODES = ("offline", "online", "disabled")


class WandbCallback(Callback):
    def __init__(
        self,
        mode: str = "offline",
        project: str = "fmnist",
        entity: str | None = None,
        sweep_dir: str | None = None,
        job_type: str = "train",
        tags: list[str] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"callbacks.wandb.mode={mode} is invalid: {', '.join(MODES)}")
        self.mode, self.project, self.entity = mode, project, entity
        self.group = Path(sweep_dir).name if sweep_dir else None
        self.job_type, self.tags = job_type, list(tags or [])
        self.run: Any = None
        self.logged = 0

    def on_run_start(self, state: RunState) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "callbacks.wandb needs W&B: pip install 'fmnist[trackers]' (wandb)"
            ) from None
        record = read_object(state.run_dir / RECORD)
        run_id = record.get("run_id") if state.resumed else None
        run_id = run_id or uuid.uuid4().hex[:8]  # W&B's id alphabet: lowercase letters, digits
        self.logged = int(record.get("logged") or 0) if state.resumed else 0
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner is not the run's log
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            dir=str(state.run_dir),
            id=run_id,
            resume="allow",
            name=state.name,
            group=self.group,
            job_type=self.job_type,
            tags=self.tags,
            config=state.hparams,
            mode=self.mode,
            reinit="create_new",  # side by side: a fused group's members, a notebook's own run
            settings=wandb.Settings(console="off"),
        )
        write_json(state.run_dir / RECORD, {"run_id": run_id, "logged": self.logged})
        self._send(state)

    def _send(self, state: RunState) -> None:
        for row in state.history:
            if row["epoch"] > self.logged:
                self.run.log(metric_rows(row), step=row["epoch"])
                self.logged = row["epoch"]
        write_json(state.run_dir / RECORD, {"run_id": self.run.id, "logged": self.logged})

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        self._send(state)

    def on_run_end(self, state: RunState) -> None:
        self.run.summary.update({"status": state.end_status, **(state.best or {})})
        self.run.finish(exit_code=0)
        self.run = None

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        if self.run is not None:
            self.run.finish(exit_code=130 if isinstance(exc, KeyboardInterrupt) else 1)
            self.run = None
