"""hydra/launcher=pool (fmnist/sweeps/pool.py): one job per slot, the next the moment a slot frees,
with real worker processes, real cores and a real search."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException

from fmnist.sweeps.pool import NoWorkerError, Pool
from fmnist.sweeps.slots import PoolSettingError, check_settings, plan_slots
from tests.conftest import run_train
from tests.test_resume import metrics, start

TINY = ["epochs=1", "limit_train_batches=3", "limit_test_batches=1", "callbacks.progress.bar=false"]
POOL = ["-m", "hydra/launcher=pool", "hydra.launcher.slots=2", "hydra.launcher.cores_per_slot=1"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_slots_share_out_gpus_and_cores():
    slots, why = plan_slots(4, list(range(16)), None, 2, None)
    assert [s.device for s in slots] == [f"cuda:{i % 4}" for i in range(8)] and "4 CUDA" in why
    cpus = [c for s in slots for c in s.cpus]
    assert len(cpus) == len(set(cpus)) == 16  # 2 cores each, none shared
    slots, why = plan_slots(0, [0, 1], None, 1, None)
    assert [(s.device, s.cpus) for s in slots] == [("cpu", (0,)), ("cpu", (1,))]
    slots, _ = plan_slots(0, list(range(32)), None, 1, None)
    assert len(slots) == 8 and all(len(s.cpus) == 4 for s in slots)
    capped, why = plan_slots(0, [0, 1, 2, 3], 3, 1, 2)  # never more slots than cores allow
    assert len(capped) == 2 and "slots=3 capped" in why
    capped, why = plan_slots(1, [0, 1], 4, 1, None)  # never 2 jobs on a GPU...
    assert len(capped) == 1 and "slots=4 capped" in why  # ...silently
    assert len(plan_slots(1, [0, 1], None, 2, None)[0]) == 2  # ...unless jobs_per_device says so


@pytest.mark.parametrize(
    "settings",
    [
        (0, 1, None),
        (None, 0, None),
        (None, 1, 0),
        (-2, 1, None),
        ("x", 1, None),
        (None, 1, None, -1),
        (None, 1, None, "0,1"),
    ],
)
def test_settings_that_cannot_work_are_one_line(settings):
    with pytest.raises(PoolSettingError, match=r"hydra\.launcher\.\w+=\S+ is invalid"):
        check_settings(*settings)
    check_settings(None, 1, None)  # the defaults
    check_settings(None, 1, None, 0)  # devices=0: cores only, on a GPU machine too


class Unstartable:
    """A slot's executor whose worker cannot start, even anew (the machine out of processes)."""

    def __init__(self, starts: list):
        self.starts = starts

    def submit(self, *args):
        self.starts.append(args[1])  # the job's index
        if len(self.starts) % 2:  # a dead worker's executor, then a new one that cannot spawn
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    def shutdown(self, wait, kill_workers):
        pass


class Immediate:
    """A slot's executor whose jobs end at once, completed."""

    def submit(self, fn, idx, overrides, *args):
        future = Future()
        future.set_result(JobReturn(overrides=overrides, status=JobStatus.COMPLETED))
        return future


def make_pool(slots: int) -> Pool:
    settings = dict(slots=slots, jobs_per_device=1, cores_per_slot=1, devices=0)
    return Pool(SimpleNamespace(**settings, hydra_context=None, config=None, task_function=None))


def test_a_slot_no_worker_can_start_in_rests_and_its_jobs_run_in_the_others(monkeypatch, caplog):
    """Slot 0 cannot start a worker: its job waits for slot 1, none is lost or failed, slot 0
    is tried again once a job has ended, and its rest is logged once."""
    pool, starts = make_pool(2), []
    monkeypatch.setattr(
        pool, "_executor", lambda slot: Unstartable(starts) if slot.index == 0 else Immediate()
    )
    handles = [pool.submit([f"seed={i}"], i) for i in range(3)]
    assert starts == [0, 0] and [h.slot.index for h in pool.running.values()] == [1]
    ended = []
    while pool.running:
        ended += pool.wait_any()
    assert ended == handles and starts == [0, 0, 1, 1, 2, 2]  # slot 0 tried after each end
    assert {h.ret.status.name for h in handles} == {"COMPLETED"}
    assert [s.index for s in pool.free + pool.resting] == [0, 1]
    assert caplog.text.count("slot 0: no worker process could start") == 1


def test_when_no_slot_can_start_a_worker_and_nothing_runs_the_sweep_stops_in_one_line(
    monkeypatch,
):
    pool, starts = make_pool(2), []
    monkeypatch.setattr(pool, "_executor", lambda slot: Unstartable(starts))
    with pytest.raises(NoWorkerError) as stopped:
        pool.submit(["seed=0"], 0)
    message = str(stopped.value)
    assert "\n" not in message and "any of the 2 slot(s)" in message
    assert "Resource temporarily unavailable" in message and "1 job(s) not started" in message
    assert starts == [0, 0, 0, 0] and len(pool.queue) == 1 and not pool.running  # kept, not failed
    assert isinstance(stopped.value, CompactHydraException)  # Hydra prints it as one line
    # a job that ended as the last slot gave up is returned first: its result is not lost
    pool, starts = make_pool(1), []
    executors = iter([Immediate(), Unstartable(starts), Unstartable(starts)])
    monkeypatch.setattr(pool, "_executor", lambda slot: next(executors))
    first, second = pool.submit(["seed=0"], 0), pool.submit(["seed=1"], 1)
    assert pool.wait_any() == [first] and first.ret.status.name == "COMPLETED"
    assert starts == [1, 1] and list(pool.queue) == [second]
    with pytest.raises(NoWorkerError, match="1 job\\(s\\) not started"):
        pool.wait_any()


@pytest.mark.slow
def test_four_jobs_over_two_slots_run_on_disjoint_cores_in_two_live_workers(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    done = run_train([*POOL, "seed=0,1,2,3", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert "pool launcher: 2 slot(s)" in done.stdout
    jobs = sorted(sweep.glob("*/provenance.json"))
    assert len(jobs) == 4
    slots = [read(p)["slot"] for p in jobs]
    assert {s["index"] for s in slots} == {0, 1} and {s["device"] for s in slots} == {"cpu"}
    by_slot = {s["index"]: s["cpus"] for s in slots}
    assert len(by_slot[0]) == len(by_slot[1]) == 1 and by_slot[0] != by_slot[1]
    status = [read(p.parent / "status.json") for p in jobs]
    assert {s["status"] for s in status} == {"completed"}
    pids = {s["pid"] for s in status}
    assert len(pids) == 2 and os.getpid() not in pids  # one worker per slot, kept between jobs
    assert {read(p)["hardware"]["threads"] for p in jobs} == {1}  # its slot's cores


@pytest.mark.slow
def test_a_killed_worker_fails_its_job_alone_and_the_sweep_goes_on(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    args = [*POOL, "seed=0,1,2", "epochs=2", "limit_train_batches=200", "limit_test_batches=1"]
    proc = start([*args, "callbacks.progress.bar=false", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    victim = sweep / "epochs=2,seed=0" / "status.json"
    deadline = time.monotonic() + 120
    while not (victim.is_file() and read(victim).get("status") == "running"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.kill(read(victim)["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-2000:]
    assert "its worker process died" in out
    for seed in (1, 2):
        assert read(sweep / f"epochs=2,seed={seed}" / "status.json")["status"] == "completed"
    assert "epochs=2,seed=0: crashed" in out or "epochs=2,seed=0: failed" in out, out[-2000:]


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.slow
def test_a_search_over_the_pool_starts_a_trial_while_a_long_one_still_runs(tmp_path, data_root):
    sweep = tmp_path / "search"  # n_jobs left out: as many trials at once as the pool has slots
    run_train(
        ["hparams_search=optuna", "hydra/launcher=pool", "hydra.launcher.slots=2"]
        + ["hydra.launcher.cores_per_slot=1", "hydra.sweeper.n_trials=4"]
        + ["hydra.sweeper.pruner=none", "epochs=1", "limit_test_batches=1", "data.val_size=1000"]
        + ["hydra.sweeper.params.lr=0.01", "hydra.sweeper.params.batch_size=100"]
        + ["hydra.sweeper.params.optimizer=adam"]
        + ["+hydra.sweeper.params.limit_train_batches='choice(2,400)'"]
        + ["hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler"]
        + ["hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    trials = {p.parent.name: read(p) for p in sorted(sweep.glob("trial_*/status.json"))}
    assert len(trials) == 4 and {t["status"] for t in trials.values()} == {"completed"}
    first_two = [trials["trial_000"], trials["trial_001"]]
    sizes = {t["hparams"]["limit_train_batches"] for t in first_two}
    assert sizes == {2, 400}  # the seeded sampler's first two trials: one short, one long
    long_end = max(when(t["ended"]) for t in first_two)
    # in batches, trial 2 would wait for both; here it starts as soon as the short one ends
    assert when(trials["trial_002"]["started"]) < long_end, trials


@pytest.mark.slow
def test_sigterm_to_the_pools_parent_stops_every_started_job_and_a_rerun_completes(
    tmp_path, data_root
):
    sweep = tmp_path / "sweep"
    job = ["epochs=3", "limit_train_batches=200", "limit_test_batches=1"]
    args = [*POOL, "seed=0,1,2", *job, "callbacks.progress.bar=false", f"hydra.sweep.dir={sweep}"]
    proc = start(args, cwd=tmp_path)
    started = [sweep / f"epochs=3,seed={s}" / "status.json" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(p.is_file() and read(p).get("last_epoch", 0) >= 1 for p in started):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    for path in started:  # both slots' jobs saved at a batch and said so
        assert read(path)["status"] == "interrupted" and read(path)["last_epoch"] < 3
    assert not (sweep / "epochs=3,seed=2" / "results.json").exists()  # never started
    run_train(args, cwd=tmp_path)
    for seed in (0, 1, 2):
        assert read(sweep / f"epochs=3,seed={seed}" / "status.json")["status"] == "completed"
    # the resumed job trains as one that was never stopped (one thread, as in its slot)
    reference = tmp_path / "reference"
    run_train(["seed=0", *job, "runtime.threads=1", f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert metrics(sweep / "epochs=3,seed=0") == metrics(reference)


@pytest.mark.slow
def test_kill9_of_a_search_over_the_pool_then_the_same_command_ends_with_n_trials(
    tmp_path, data_root
):
    sweep = tmp_path / "search"
    args = [
        *["hparams_search=optuna", "hydra/launcher=pool", "hydra.launcher.slots=2"],
        *["hydra.launcher.cores_per_slot=1", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=5"],
        *["hydra.sweeper.pruner=none", "epochs=2", "limit_train_batches=200"],
        *["limit_test_batches=2", "data.val_size=1000", "callbacks=[results,checkpoint]"],
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start(args, cwd=tmp_path)
    cut = sweep / "trial_002"
    deadline = time.monotonic() + 240
    while not (cut / "checkpoints" / "last.pt").exists():  # trial 2 is one epoch in
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # the parent only, as `kill -9 <pid>`: no handler runs, its workers are orphans
    proc.communicate(timeout=150)  # EOF once the orphans have exited too
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive  # each noticed, stopped its trial and exited
    assert read(cut / "status.json")["status"] == "interrupted"  # saved by its orphaned worker
    done = run_train(args, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert f"resuming {cut} after epoch" in out  # from its checkpoint, not from scratch
    trials = {p.parent.name: read(p) for p in sorted(sweep.glob("trial_*/status.json"))}
    assert len(trials) == 5 and {t["status"] for t in trials.values()} == {"completed"}, trials
    assert [r["epoch"] for r in json.loads((cut / "results.json").read_text())] == [1, 2]
