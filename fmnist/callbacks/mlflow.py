"""MLflow: one MLflow run per job, the sweep as its parent run, the same metrics per epoch as
results.csv. `"callbacks=[default,mlflow]"` (conf/callbacks/mlflow.yaml).

A tracking server that is down, slow or refusing never fails or stalls training: each request
has a short timeout and no retries, the first failure is one warning line, and the run stops
asking until it ends. What was not logged stays in the run directory (results.csv, mlflow.json)
and is sent when the run ends or resumes with the server back: the epochs after the last one
the server has. kill -9 then the same command continues the same MLflow run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fmnist.callbacks.base import Callback, RunState
from fmnist.errors import ConfigError
from fmnist.metrics import METRIC_NAMES
from fmnist.run.files import read_object, write_json
from fmnist.run.locking import FileLock

RECORD = "mlflow.json"  # in the run directory: {tracking_uri, run_id}
PARENT = "mlflow_parent.json"  # in the sweep directory: the sweep's parent run
STATUS = {
    "completed": "FINISHED",
    "pruned": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


def client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "callbacks.mlflow needs MLflow: pip install 'fmnist[trackers]' (mlflow-skinny)"
        ) from None
    return MlflowClient


@contextmanager
def quick_requests(timeout_s: float) -> Iterator[None]:
    """MLflow's requests meanwhile give up after `timeout_s`, without retries (MLflow reads
    these per request); the process's own settings come back after."""
    keys = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s))),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def metric_rows(row: dict[str, Any]) -> dict[str, float]:
    """A results row's metrics under results.csv's names (epochs without evaluation have none
    of val_* and test_*)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k in METRIC_NAMES and k not in ("run", "epoch") and isinstance(v, int | float)
    }


class MLflowCallback(Callback):
    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        sweep_dir: str | None = None,
        log_model: bool = False,
        timeout_s: float = 5.0,
    ):
        """`tracking_uri`: a server (http://host:5000) or a local store; `experiment`: its
        name (default: the sweep's folder name, or the run's parent folder's); `sweep_dir`: set
        in a multirun (conf/callbacks/mlflow.yaml), whose parent run groups its jobs."""
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.sweep_dir = Path(sweep_dir) if sweep_dir else None
        self.log_model, self.timeout_s = log_model, timeout_s
        self.client: Any = None
        self.run_id: str | None = None
        self.sent = 0  # the last epoch the server has
        self.down = self.warned = False

    def _call(self, state: RunState, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One request; a failure is one warning (the first), and later requests are skipped."""
        if self.down:
            return None
        try:
            with quick_requests(self.timeout_s):
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any failure of the server: never the run's)
            self.down = True
            if self.warned:  # one line per run, however long the server stays away
                return None
            self.warned = True
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            state.log.warning(
                "mlflow: %s not logged to %s (%s); training goes on, and what is missing is "
                "sent when the run ends or resumes with the server back",
                what,
                self.tracking_uri,
                reason,
            )
            return None

    def on_run_start(self, state: RunState) -> None:
        make = client_class()  # a missing package is the one error that stops the run
        self.client = self._call(state, "the tracking store", make, str(self.tracking_uri))
        if self.client is None:
            return
        record = read_object(state.run_dir / RECORD)
        if state.resumed and record.get("tracking_uri") == self.tracking_uri:
            self.run_id = record.get("run_id")
        elif record.get("run_id"):  # an earlier attempt that started over: its run ends there
            self._call(state, "the earlier attempt's end", self.client.set_terminated,
                       record["run_id"], "KILLED")  # fmt: skip
        self._open(state)

    def _open(self, state: RunState) -> None:
        """Create (or reopen) the MLflow run, then send what the server does not have yet."""
        client = self.client
        if self.run_id is None:
            experiment = self._call(state, "the experiment", self._experiment_id, state)
            if experiment is None:
                return
            parent = self._parent(state, experiment) if self.sweep_dir else None
            tags = {
                "run_dir": str(state.run_dir.absolute()),
                "host": socket.gethostname(),
                "commit": str((state.provenance.get("git") or {}).get("commit")),
            }
            if self.sweep_dir:
                tags["sweep"] = str(self.sweep_dir.absolute())
            if parent:
                tags["mlflow.parentRunId"] = parent
            run = self._call(state, "the run", client.create_run, experiment, tags=tags,
                             run_name=state.name)  # fmt: skip
            if run is None:
                return
            self.run_id = run.info.run_id
            write_json(
                state.run_dir / RECORD, {"tracking_uri": self.tracking_uri, "run_id": self.run_id}
            )
            self._params(state)
        else:
            self._call(state, "the run's status", client.update_run, self.run_id, "RUNNING")
            self._ask_what_was_sent(state)
        self._send(state)

    def _ask_what_was_sent(self, state: RunState) -> None:
        history = self._call(state, "what the server has", self.client.get_metric_history,
                             self.run_id, "loss")  # fmt: skip
        if history is not None:
            self.sent = max((m.step for m in history), default=0)

    def _experiment_id(self, state: RunState) -> str:
        name = self.experiment or (
            self.sweep_dir.name if self.sweep_dir else state.run_dir.absolute().parent.name
        )
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001  (another job of the sweep made it meanwhile)
            return self.client.get_experiment_by_name(name).experiment_id

    def _parent(self, state: RunState, experiment: str) -> str | None:
        """The sweep's parent run, made once by whichever job comes first (a lock in the sweep
        directory: the jobs may run on several nodes sharing it)."""
        path, lock = self.sweep_dir / PARENT, FileLock(self.sweep_dir / ".mlflow.lock")
        try:
            lock.acquire(wait_s=2 * self.timeout_s)  # held for a request or two at most
        except OSError:  # another job holds it too long: this job logs without a parent
            return None
        try:
            known = read_object(path)
            if known.get("tracking_uri") == self.tracking_uri and known.get("run_id"):
                return known["run_id"]
            tags = {"sweep": str(self.sweep_dir.absolute()), "host": socket.gethostname()}
            run = self._call(state, "the sweep's parent run", self.client.create_run, experiment,
                             tags=tags, run_name=self.sweep_dir.name)  # fmt: skip
            if run is None:
                return None
            write_json(path, {"tracking_uri": self.tracking_uri, "run_id": run.info.run_id})
            return run.info.run_id
        finally:
            lock.release()

    def _params(self, state: RunState) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in state.hparams.items()]
        self._call(state, "the parameters", self.client.log_batch, self.run_id, params=params)

    def _send(self, state: RunState) -> None:
        """Every finished epoch the server does not have, step = epoch."""
        from mlflow.entities import Metric

        if self.run_id is None or self.down:
            return
        rows = [r for r in state.history if r["epoch"] > self.sent]
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, row["epoch"])
            for row in rows
            for key, value in metric_rows(row).items()
        ]
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1,000 a batch
            batch = metrics[start : start + 900]
            if (
                self._call(state, "metrics", self.client.log_batch, self.run_id, metrics=batch)
                is None
                and self.down
            ):
                return
        if rows:
            self.sent = rows[-1]["epoch"]

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        self._send(state)

    def _close(self, state: RunState, status: str) -> None:
        if self.down:  # one more try at the end: the server may be back
            self.down = False
            if self.client is None:
                self.client = self._call(state, "the tracking store", client_class(),
                                         str(self.tracking_uri))  # fmt: skip
            if self.client is None:
                return
            if self.run_id is None:
                self._open(state)
            else:
                self._ask_what_was_sent(state)  # what it had before it went away
                self._send(state)
        if self.run_id is None or self.down:
            return
        if status == "FINISHED":
            for name in ("results.csv", "provenance.json", "confusion_matrix.csv"):
                if (state.run_dir / name).is_file():
                    self._call(state, name, self.client.log_artifact, self.run_id,
                               str(state.run_dir / name))  # fmt: skip
            best = state.run_dir / "checkpoints" / "best.pt"
            if self.log_model and best.is_file():
                self._call(state, "best.pt", self.client.log_artifact, self.run_id, str(best),
                           "checkpoints")  # fmt: skip
        self._call(state, "the run's status", self.client.set_tag, self.run_id, "status",
                   state.end_status if status == "FINISHED" else status.lower())  # fmt: skip
        self._call(state, "the run's status", self.client.set_terminated, self.run_id, status)

    def on_run_end(self, state: RunState) -> None:
        self._close(state, STATUS.get(state.end_status, "FINISHED"))

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        if self.client is not None or self.down:
            self._close(state, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")


def end_sweep(sweep_dir: Path, failed: bool) -> None:
    """The sweep's parent run ends with the sweep: FINISHED, or FAILED when a job failed."""
    record = read_object(sweep_dir / PARENT)
    if not record.get("run_id"):
        return
    try:
        with quick_requests(5):
            client_class()(record["tracking_uri"]).set_terminated(
                record["run_id"], "FAILED" if failed else "FINISHED"
            )
    except Exception as exc:  # noqa: BLE001  (the server's trouble is never the sweep's)
        print(f"warning: mlflow: the sweep's parent run not ended ({exc})".splitlines()[0])
