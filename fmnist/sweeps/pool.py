"""`hydra/launcher=pool`: a sweep's jobs on this machine, one job per slot, the next job the
moment a slot frees (no batches). A slot is a GPU (`jobs_per_device` jobs on each) or, without
one, a disjoint set of cores: the job's threads are its cores, pinned where the OS allows.

Each slot keeps one worker process alive between jobs (loky's executor, as joblib's workers do):
a job does not pay `import torch` again, and it is still a clean run (its own seed, threads,
logger, status). A worker that dies fails its job alone; the slot gets a new worker. A slot where
no worker can start (the machine out of processes or memory) rests until another job ends, its
job waiting for the next slot; when nothing runs and every slot rests, the sweep stops in one
line (the same command resumes it). Ctrl-C and SIGTERM stop the sweep as under joblib: every
started job saves and ends `interrupted`; so does kill -9 of the sweep's parent (its workers
notice and stop).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool  # loky's TerminatedWorkerError too
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from omegaconf import open_dict

from fmnist.run.directory import LOCK
from fmnist.sweeps.slots import Slot, available_cores, check_settings, gpus_to_use, plan_slots

log = logging.getLogger("fmnist")


class NoWorkerError(CompactHydraException):
    """No slot can start a worker and no job runs that could free one: the sweep stops."""


def _enter_slot(slot: Slot, parent: int) -> None:
    """In a slot's worker, before anything else: its GPU and its cores, and Ctrl-C left to the
    sweep's parent (it stops the running jobs; an idle worker must not die of it)."""
    if slot.device.startswith("cuda"):  # the n-th GPU this sweep may see, as given to it
        n, visible = int(slot.device.split(":")[1]), os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[n] if visible else str(n)
    else:  # a core slot (devices=0 on a GPU machine): `device=auto` must not find a GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["OMP_NUM_THREADS"] = str(len(slot.cpus))
    try:
        import psutil

        psutil.Process().cpu_affinity(list(slot.cpus))
    except (AttributeError, OSError, ValueError, ImportError):  # no affinity here (macOS)
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_stop_with_parent, args=(parent,), daemon=True).start()


ORPHAN_GRACE_S = 120.0  # an orphaned worker's job saves within this (a batch and a checkpoint)


def _stop_with_parent(parent_pid: int) -> None:
    """In a slot's worker: when the sweep's parent is gone (kill -9; loky's workers do not notice
    on POSIX and would finish their job, then wait forever), stop the job as SIGTERM does (it
    saves and ends `interrupted`, and the same command resumes it), then exit."""
    import psutil

    try:
        parent = psutil.Process(parent_pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            time.sleep(1.0)
    except psutil.Error:
        pass  # gone
    os.kill(os.getpid(), signal.SIGTERM)  # the job's handler: stop at the next batch and save
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while time.monotonic() < deadline and _holds_a_run():
        time.sleep(0.2)
    os._exit(128 + signal.SIGTERM)


def _holds_a_run() -> bool:
    """Whether this process still owns a run directory (its lock file is open)."""
    import psutil

    try:
        return any(Path(f.path).name == LOCK for f in psutil.Process().open_files())
    except psutil.Error:
        return True  # cannot tell: wait the grace out


def _run(
    idx: int, overrides: list[str], slot: Slot, context: Any, sweep: Any, task: Any, state: Any
) -> Any:
    """One job in a slot's worker, as Hydra's joblib launcher runs one."""
    setup_globals()
    Singleton.set_state(state)
    config = context.config_loader.load_sweep_config(sweep, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
        config.hydra.job.num = idx
        config.runtime.threads = len(slot.cpus)  # the slot's cores, whatever the job asked
        config.runtime.slot = slot.record()
    HydraConfig.instance().set_config(config)
    return run_job(
        hydra_context=context,
        config=config,
        task_function=task,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


@dataclass(eq=False)
class Handle:
    """A job given to the pool: `ret` once it has ended."""

    idx: int
    overrides: list[str]
    ret: JobReturn | None = None
    slot: Slot | None = field(default=None, repr=False)


class Pool:
    def __init__(self, launcher: Any):
        self.launcher = launcher
        check_settings(
            launcher.slots, launcher.jobs_per_device, launcher.cores_per_slot, launcher.devices
        )
        gpus = gpus_to_use(launcher.devices)
        self.slots, why = plan_slots(
            gpus,
            available_cores(),
            launcher.slots,
            launcher.jobs_per_device,
            launcher.cores_per_slot,
        )
        print(f"pool launcher: {len(self.slots)} slot(s) ({why})", flush=True)
        self.free = list(self.slots)
        self.resting: list[Slot] = []  # no worker could start there: back when a job ends
        self.warned: set[int] = set()  # slots whose rest was logged
        self.start_error = ""  # why the last worker could not start
        self.executors: dict[int, Any] = {}
        self.queue: deque[Handle] = deque()
        self.running: dict[Future, Handle] = {}
        self.interrupted: BaseException | None = None

    def submit(self, overrides: list[str], idx: int) -> Handle:
        handle = Handle(idx, list(overrides))
        self.queue.append(handle)
        self._dispatch()
        self._stop_if_stuck()
        return handle

    def _executor(self, slot: Slot) -> Any:
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        if slot.index not in self.executors:
            self.executors[slot.index] = ProcessPoolExecutor(
                max_workers=1, initializer=_enter_slot, initargs=(slot, os.getpid())
            )
        return self.executors[slot.index]

    def _dispatch(self) -> None:
        ctx, sweep = self.launcher.hydra_context, self.launcher.config
        while self.queue and self.free and self.interrupted is None:
            handle, slot = self.queue.popleft(), self.free.pop(0)
            handle.slot = slot
            args = (handle.idx, handle.overrides, slot, ctx, sweep, self.launcher.task_function)
            for attempt in (1, 2):  # a worker that died while idle (killed, out of memory): anew
                try:
                    future = self._executor(slot).submit(_run, *args, Singleton.get_state())
                except (BrokenProcessPool, OSError) as exc:  # OSError: no process to spawn
                    self._drop_executor(slot)
                    if attempt == 2:  # not even a new worker: the slot rests, the job waits
                        self._rest(slot, handle, exc)
                    continue
                self.running[future] = handle
                if slot.index in self.warned:
                    self.warned.discard(slot.index)
                    log.info("slot %d: a worker started again", slot.index)
                log.info(
                    "\t#%d : %s (slot %d)",
                    handle.idx,
                    " ".join(filter_overrides(handle.overrides)),
                    slot.index,
                )
                break

    def _stop_if_stuck(self) -> None:
        """Nothing runs and every slot rests: nothing would ever start the queued jobs."""
        stuck = self.queue and not self.running and not self.free  # after a dispatch
        if stuck and self.interrupted is None:
            raise NoWorkerError(
                f"no worker process could start in any of the {len(self.slots)} slot(s) "
                f"({self.start_error}) and no job runs: the sweep stops with "
                f"{len(self.queue)} job(s) not started; the same command resumes it"
            )

    def _rest(self, slot: Slot, handle: Handle, exc: BaseException) -> None:
        """A slot that cannot start a worker rests until another job ends (it may have freed
        the processes or memory); its job goes back to the front of the queue."""
        handle.slot = None
        self.queue.appendleft(handle)
        self.resting.append(slot)
        self.start_error = f"{type(exc).__name__}: {exc}"
        if slot.index not in self.warned:
            self.warned.add(slot.index)
            log.warning(
                "slot %d: no worker process could start (%s); it rests until another job ends",
                slot.index,
                self.start_error,
            )

    def _drop_executor(self, slot: Slot) -> None:
        """A slot's broken executor goes, nothing of it left on the slot's GPU or cores."""
        executor = self.executors.pop(slot.index, None)
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)

    def wait_any(self) -> list[Handle]:
        """The first running jobs to end (blocking until one does), their slots freed, and the
        resting slots with them; then the queue's next jobs start. Jobs that ended are always
        returned: a sweep that cannot go on stops at the next call."""
        self._stop_if_stuck()
        ended = []
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        for future in done:
            handle = self.running.pop(future)
            handle.ret = self._result(future, handle)
            self.free.append(handle.slot)
            ended.append(handle)
        if ended:
            self.free.extend(self.resting)
            self.resting.clear()
            self.free.sort(key=lambda s: s.index)
        self._dispatch()
        return ended

    def _result(self, future: Future, handle: Handle) -> JobReturn:
        try:
            return future.result()
        except KeyboardInterrupt as exc:  # the job saved and stopped: so does the sweep
            self.interrupted = self.interrupted or exc
            return _failed(handle, exc)
        except BrokenProcessPool as exc:  # its worker died: that job fails alone
            self._drop_executor(handle.slot)
            reason = RuntimeError(f"its worker process died ({type(exc).__name__}: {exc})")
            log.error("#%d failed: %s", handle.idx, reason)
            return _failed(handle, reason)
        except Exception as exc:  # noqa: BLE001  (its result could not come back: it fails alone)
            reason = RuntimeError(f"its result could not be returned ({type(exc).__name__}: {exc})")
            log.error("#%d failed: %s", handle.idx, reason)
            return _failed(handle, reason)

    def close(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=False, kill_workers=True)
        self.executors.clear()


def _failed(handle: Handle, exc: BaseException) -> JobReturn:
    ret = JobReturn(overrides=handle.overrides, status=JobStatus.FAILED)
    ret.return_value = exc
    return ret


def launch(launcher: Any, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
    """Every job of a grid sweep through the pool; the returns in sweep order."""
    pool = launcher.pool()
    try:
        handles = [pool.submit(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        while pool.running or (pool.queue and pool.interrupted is None):
            pool.wait_any()  # a queue with nothing running: every slot rests, it raises
    except BaseException:  # a signal to the parent: its jobs have saved (SweepReport)
        pool.close()
        raise
    if pool.interrupted is not None:
        pool.close()
        raise pool.interrupted
    return [h.ret for h in handles]
