"""Hydra callback for sweeps: refuse sweeps whose jobs would share a directory, give jobs that
failed before training a status, and print the summary table with every failed job's reason.

Hydra 1.3 skips `on_multirun_end` when a job failed and re-raises only the first failure, so the
report is also registered with `atexit` and printed once, whichever comes first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fmnist.hparams import named
from fmnist.run.directory import owner
from fmnist.run.files import read_json
from fmnist.run.locking import children
from fmnist.run.status import ENDED_AS_PLANNED, read_status, write_status


def job_exception(job_return: JobReturn) -> BaseException | None:
    """A failed job's exception, through Hydra's public API (`return_value` re-raises it)."""
    try:
        job_return.return_value  # noqa: B018
    except BaseException as exc:  # noqa: BLE001  (whatever the job raised)
        return exc
    return None


def swept_keys(config: DictConfig) -> set[str]:
    """Keys given more than one value, on the command line or in `hydra.sweeper.params`."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    params = config.hydra.sweeper.get("params") or {}
    keys |= {str(k) for k, v in params.items() if "," in str(v) or "(" in str(v)}
    return keys


def is_search(config: DictConfig) -> bool:
    """Whether the sweeper is an Optuna search (hparams_search=optuna)."""
    return "optuna" in str(config.hydra.sweeper.get("_target_", ""))


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will have (grid product, or Optuna's n_trials); None if unknown."""
    sweeper = config.hydra.sweeper
    if is_search(config):
        return int(sweeper.n_trials)
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    count = 1
    for override in OverridesParser.create().parse_overrides(
        [*config.hydra.overrides.task, *params]
    ):
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            count *= len(list(override.sweep_iterator()))
    return count


def shared_directory_keys(config: DictConfig) -> list[str]:
    """Swept keys left out of job directory names: their jobs would all write one directory."""
    return sorted(k for k in swept_keys(config) if not named(k))


class SweepReport(Callback):
    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.planned: int | None = None
        self.search = False  # an Optuna search: its failed trials are final, not resumed
        self.reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        clash = [] if is_search(config) else shared_directory_keys(config)  # trial_<n> dirs
        if clash:
            print(
                f"error: cannot sweep {', '.join(clash)}: it is left out of job directory names "
                "(named=False on the schema, fmnist/config.py), so the jobs would share one "
                "directory; run one sweep per value with its own hydra.sweep.dir",
                file=sys.stderr,
            )
            sys.exit(2)  # SystemExit passes through Hydra's callback guard: no job has started
        for sig in (
            signal.SIGINT,
            signal.SIGTERM,
        ):  # a job's own handler replaces these while it runs
            signal.signal(sig, self.on_signal)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.search = is_search(config)
        try:
            self.planned = planned_jobs(config)
        except Exception:  # noqa: BLE001  (a count is a courtesy; never stop a sweep for it)
            self.planned = None
        # what the summary needs, imported now: at exit (a sweep ended by an error) imports
        # that start threads fail ("can't register atexit after shutdown")
        import fmnist.callbacks.tensorboard  # noqa: F401
        import fmnist.commands.compare  # noqa: F401
        from fmnist.plots import pyplot

        pyplot()  # the summary's figure
        if "mlflow" in (config.get("callbacks") or {}):  # the sweep's parent run ends at exit
            from fmnist.callbacks.mlflow import client_class

            with contextlib.suppress(Exception):  # not installed: the job's error says so
                client_class()

        atexit.register(self.finish)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job that failed before training started (bad value, no data) still gets a status."""
        if job_return.status != JobStatus.FAILED:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        if owner(run_dir) is not None:  # refused: another live process runs it, its status stays
            return
        status = read_status(run_dir)
        if status is None or status.get("status") == "running":
            exc = job_exception(job_return)
            write_status(
                run_dir,
                status="failed",
                run=run_dir.name,
                last_epoch=(status or {}).get("last_epoch", 0),
                error={"type": type(exc).__name__, "message": str(exc)},
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def on_signal(self, signum: int, frame: object) -> None:
        """SIGINT or SIGTERM to the sweep's parent outside a job: its workers stop their jobs at
        the next batch and save (`stop_workers`); then the parent stops too (exit 130/143)."""
        from fmnist.engine.signals import RunInterrupted

        if self.sweep_dir is not None:
            stop_workers(self.sweep_dir, signum)
        raise RunInterrupted(signum)

    def finish(self) -> None:
        """Print the summary and the failures, once."""
        if self.sweep_dir is None or self.reported:
            return
        self.reported = True
        from fmnist.sweeps.slurm import JOBS_FILE

        try:
            submitted = read_json(self.sweep_dir / JOBS_FILE)
        except (OSError, ValueError):
            submitted = {}
        if isinstance(submitted, dict) and submitted.get("wait") is False:
            jobs = submitted.get("jobs")
            print(
                f"{len(jobs) if isinstance(jobs, dict) else '?'} job(s) submitted to Slurm (array "
                f"{submitted.get('array')}); see how they do with: fmnist-compare {self.sweep_dir}"
            )
            return
        from fmnist.commands.compare import report
        from fmnist.commands.compare.table import find_runs

        if not (self.sweep_dir / JOBS_FILE).exists() and (
            not self.sweep_dir.is_dir() or not find_runs(self.sweep_dir)
        ):
            return  # refused before any job started: its error said why
        print(f"\n=== sweep summary: {self.sweep_dir} ===", flush=True)
        try:
            summary = report(self.sweep_dir)
        except (FileNotFoundError, ValueError) as exc:
            print(f"no summary: {exc}")
            return
        tensorboard_experiment(self.sweep_dir)
        ended = summary.table["status"].isin(ENDED_AS_PLANNED)
        failed = summary.table[~ended]
        if (self.sweep_dir / "mlflow_parent.json").is_file():
            from fmnist.callbacks.mlflow import end_sweep

            end_sweep(self.sweep_dir, failed=bool(len(failed)))
        pruned = summary.table[summary.table["status"] == "pruned"]
        if len(pruned):
            print(f"\n{len(pruned)} trial(s) pruned by the search (kept, never selected):")
            for row in pruned.itertuples(index=False):
                print(f"  {row.run}: {getattr(row, 'reason', '') or 'pruned'}")
        total = max(self.planned or 0, len(summary.table))
        not_started = total - len(summary.table)
        if len(failed) or not_started:
            print(
                f"\n{len(failed) + not_started} of {total} jobs did not complete:", file=sys.stderr
            )
            for row in failed.itertuples(index=False):
                reason = getattr(row, "reason", "") or ""
                print(
                    f"  {row.run}: {row.status} after epoch {row.epochs}  {reason}", file=sys.stderr
                )
            if not_started:
                print(f"  {not_started} job(s) not started", file=sys.stderr)
            cut_short = not_started or (~failed["status"].isin(["failed", "unreadable"])).any()
            if not self.search or cut_short:  # a search keeps its failed trials as they are
                print(
                    f"rerun the same command with hydra.sweep.dir={self.sweep_dir} to resume",
                    file=sys.stderr,
                )
        sys.stdout.flush()
        sys.stderr.flush()


def tensorboard_experiment(sweep_dir: Path) -> None:
    """The sweep's HParams experiment for TensorBoard (its jobs logged there): what varies
    across its runs first, the constants after. Kept with its first job, so TensorBoard's runs
    stay one per job."""
    runs = sorted({p.parent for p in sweep_dir.glob("*/events.out.tfevents.*")})
    hparams = [(read_status(r) or {}).get("hparams") for r in runs]
    hparams = [h for h in hparams if isinstance(h, dict)]
    if not hparams:
        return
    from fmnist.callbacks.tensorboard import write_experiment

    keys = list(dict.fromkeys(k for h in hparams for k in h))
    varying = {k: hparams[0].get(k) for k in keys if len({repr(h.get(k)) for h in hparams}) > 1}
    constants = {k: hparams[0][k] for k in keys if k not in varying and k in hparams[0]}
    try:
        write_experiment(runs[0], varying, constants)
    except OSError as exc:
        print(f"warning: no TensorBoard HParams experiment for the sweep: {exc}", file=sys.stderr)


def running_jobs(sweep_dir: Path, workers: set[int]) -> dict[Path, int]:
    """Job directories of the sweep held by one of `workers`, with the holder's pid."""
    held = {lock.parent: owner(lock.parent) for lock in sweep_dir.rglob(".owner.lock")}
    return {job: pid for job, pid in held.items() if pid in workers}


def stop_workers(sweep_dir: Path, signum: int, timeout_s: float = 300.0) -> bool:
    """In a sweep's parent (joblib, submitit_local): SIGTERM each worker that runs a job, and
    each that starts one meanwhile, then wait until they have saved and let go of their job
    directories. Idle workers are left alone (an idle loky worker dies of SIGTERM, and its
    executor would then kill the others mid-save). False when this process has no workers."""
    if not children(os.getpid()):
        return False
    print(
        f"\nsignal {signum}: stopping the sweep's running jobs at their next batch", file=sys.stderr
    )
    told: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = running_jobs(sweep_dir, set(children(os.getpid())))
        if not jobs:
            break
        for pid in set(jobs.values()) - told:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # a worker takes it with a terminal's Ctrl-C as one
            told.add(pid)
        time.sleep(0.2)
    return True
