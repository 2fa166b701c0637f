"""`hydra/launcher=slurm`: hydra-submitit-launcher's Slurm launcher, with what a sweep on a real
cluster needs besides submitting: a job that Slurm cancelled, that failed outside Python or that
ran out of time is reported as that job's failure (its Slurm id, state and log) instead of a
traceback that ends the sweep, and `hydra.launcher.wait=false` submits and returns at once.

Time limits and preemption: submitit asks Slurm for SIGUSR2 `signal_delay_s` before the limit;
the run stops at its next batch, saves (`fmnist.engine.signals.StopOnSignal`), then submitit
requeues the job, and the requeued job resumes from its checkpoint: for as long as each slice
finishes an epoch, and `max_num_timeout` times for slices that finish none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from fmnist.run.files import write_json
from fmnist.run.status import ENDED_AS_PLANNED, read_status, slurm_states, write_status

log = logging.getLogger("fmnist")

JOBS_FILE = "slurm_jobs.json"  # in the sweep directory: job number -> Slurm job id and log
ASK_SLURM_S = 10.0  # while waiting, Slurm is asked at least this often (submitit alone slows
# to once every 10 minutes: a cancelled job would be reported that late)
ENDED_WITHOUT_RESULT = ("CANCELLED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY")  # killed
NO_RESULT_WAIT_S = 2  # for the result file of a job killed so: submitit waits 15 s for one
# (a job FAILED or out of TIME may have written one that a network file system shows late)


class SlurmJobError(CompactHydraException):
    """A job ended without a result: cancelled, killed, out of time or memory, node failure.
    Compact: Hydra prints its one line, not a traceback of the sweep's parent."""


class SlurmSettingError(CompactHydraException):
    """Launcher settings that cannot work; one line, before anything is submitted."""


def check_signal_delay(timeout_min: float, delay_s: int) -> None:
    """Slurm warns a job `signal_delay_s` before its limit, and the job then saves and is
    requeued: a delay over half the limit leaves each slice (almost) no time to train."""
    limit_s = 60 * timeout_min
    if delay_s > limit_s / 2:
        raise SlurmSettingError(
            f"hydra.launcher.signal_delay_s={delay_s} is invalid with timeout_min={timeout_min:g}: "
            f"each job would be told to stop {delay_s} s into a {limit_s:g} s slice; "
            f"use at most {int(limit_s // 4)} (a quarter of the limit)"
        )


def launch(launcher: Any, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
    """Submit the sweep as one array job; wait for it unless `wait` is false."""
    import submitit

    config = launcher.config
    params = OmegaConf.to_container(OmegaConf.create(dict(launcher.params)), resolve=True)
    assert isinstance(params, dict) and config is not None
    wait = bool(params.pop("wait", True))
    check_signal_delay(float(params["timeout_min"]), int(params.get("signal_delay_s") or 0))
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
    for number, overrides in zip(numbers, job_overrides, strict=True):
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
    arguments = [
        (list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state())
        for n, o in zip(numbers, job_overrides, strict=True)
    ]
    jobs = executor.map_array(launcher, *zip(*arguments, strict=True))
    job_dirs = [job_dir(launcher, list(o)) for o in job_overrides]
    record = {
        "array": jobs[0].job_id.split("_")[0],
        "wait": wait,
        "jobs": {
            str(n): {"job_id": j.job_id, "dir": str(d), "log": str(j.paths.stderr)}
            for n, d, j in zip(numbers, job_dirs, jobs, strict=True)
        },
    }
    write_json(sweep_dir / JOBS_FILE, record)
    print(
        f"submitted {len(jobs)} job(s) to Slurm as array {jobs[0].job_id.split('_')[0]} "
        f"(ids in {sweep_dir / JOBS_FILE})",
        flush=True,
    )
    if not wait:
        print(f"not waiting (hydra.launcher.wait=false): later, fmnist-compare {sweep_dir}")
        raise SystemExit(0)
    return [_result(j, list(o), d) for j, o, d in zip(jobs, job_overrides, job_dirs, strict=True)]


def job_dir(launcher: Any, overrides: list[str]) -> Path:
    """Where a job of the sweep writes (as Hydra will compute it in the job)."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def wait_for(job: Any) -> None:
    """Until the job has ended: its result file checked every second, Slurm every ASK_SLURM_S.
    A job that Slurm ended (cancelled, failed, out of time) with no result file gets a short
    wait for one: a result comes from the job, before Slurm calls it ended."""
    asked = time.monotonic()
    while not job.done():
        time.sleep(1)
        if time.monotonic() - asked >= ASK_SLURM_S:
            asked = time.monotonic()
            if job.done(force_check=True):
                break
    if not job.paths.result_pickle.exists():
        state = slurm_states([job.job_id]).get(job.job_id, "")
        if state.startswith(ENDED_WITHOUT_RESULT):
            job._results_timeout_s = NO_RESULT_WAIT_S


def _result(job: Any, overrides: list[str], run_dir: Path) -> JobReturn:
    """The job's own JobReturn, or a failed one naming what Slurm says happened to it. The run's
    status says `interrupted` with that reason, so the summary lists it and a rerun resumes it; a
    run whose status says it ended is that run's result (its objective), whatever Slurm says."""
    from submitit.core.utils import UncompletedJobError

    try:
        wait_for(job)
        ret = job.results()[0]
        cause = ret._return_value if ret.status == JobStatus.FAILED else None
        if isinstance(cause, UncompletedJobError):  # submitit in the job: no requeue left
            ret._return_value = SlurmJobError(f"Slurm job {job.job_id}: {cause}")
        return ret
    except Exception:  # noqa: BLE001  (UncompletedJobError, FailedJobError, ...)
        state = slurm_states([job.job_id]).get(job.job_id) or job.state
        message = f"Slurm job {job.job_id} {state} (log: {job.paths.stderr})"
        status = read_status(run_dir)
        if status is not None and status.get("status") in ENDED_AS_PLANNED:
            # the run ended and said so; only its result file was lost (killed while exiting)
            log.warning("%s after its run ended %s: kept as it ended", message, status["status"])
            ended = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            ended._return_value = status.get("objective")  # what the task function returned
            return ended
        if status is not None:
            write_status(
                run_dir,
                status="interrupted",
                error={"type": "SlurmJobError", "message": message},
                slurm_job=job.job_id,
                slurm_state=state,
            )
        failed = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        failed._return_value = SlurmJobError(message)  # what JobReturn.return_value raises
        return failed
