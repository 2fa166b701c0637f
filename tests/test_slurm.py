"""Sweeps on a real Slurm cluster started by the tests (tests/conftest.py `slurm_cluster`):
the README sweep as one array job, a cancelled job reported in one line and resumed by a rerun,
a job past its time limit requeued and finished on its own, submitting without waiting, and a
run's status read from another host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmnist.run.status import slurm_states
from fmnist.sweeps.slurm import JOBS_FILE
from tests.conftest import ROOT, run_train
from tests.test_resume import metrics, start, wait_for_epoch

pytestmark = pytest.mark.slow
QUICK = ["limit_test_batches=1", "callbacks.progress.bar=false"]


def jobs_of(sweep: Path) -> dict[str, dict]:
    return json.loads((sweep / JOBS_FILE).read_text())["jobs"]


def reference(args: list[str], tmp_path: Path, name: str) -> list[dict]:
    """The same run, uninterrupted, on this machine with one thread (as each Slurm job has)."""
    run_dir = tmp_path / name
    run_train([*args, *QUICK, "runtime.threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    return metrics(run_dir)


def release_when_requeued(job_id: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Once the requeued job is held (pending, reason BeginTime), start it now. A Slurm that
    does not hold it starts it by itself: the test's assertions are the same either way."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True
        ).stdout.split()
        if state == ["PENDING", "BeginTime"]:
            update = ["scontrol", "update", f"JobId={job_id}", "StartTime=now"]
            subprocess.run(update, capture_output=True, timeout=30)  # it may have started
            return
        time.sleep(0.2)


def test_a_signal_delay_that_leaves_a_job_no_time_is_one_line_before_submitting(tmp_path):
    """No cluster needed: refused before submitit is asked for anything."""
    pytest.importorskip("submitit")
    sweep = tmp_path / "sweep"
    done = run_train(
        ["-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=1", "lr=0.01,0.001"]
        + [f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        check=False,
    )
    (line,) = [x for x in done.stderr.splitlines() if "signal_delay_s" in x]  # one line
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "signal_delay_s=120 is invalid with timeout_min=1" in line and "at most 15" in line
    assert not (sweep / JOBS_FILE).exists()


def test_the_readme_sweep_runs_as_one_array_job(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["lr=0.01,0.001", "batch_size=100,1000"]
    args = ["-m", *slurm, *grid, "epochs=1", "limit_train_batches=5", *QUICK]
    done = run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    jobs = jobs_of(sweep)
    ids = [j["job_id"] for j in jobs.values()]
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array job
    assert "=== sweep summary" in done.stdout and done.stdout.count("completed") >= 4
    # the sweep ends once each job's result is written; a job's process may still be exiting
    deadline = time.time() + 60
    while {*(states := slurm_states(ids)).values()} & {"RUNNING", "COMPLETING"}:
        assert time.time() < deadline, states
        time.sleep(0.5)
    assert [states[i] for i in ids] == ["COMPLETED"] * 4
    for job in jobs.values():
        status = json.loads((Path(job["dir"]) / "status.json").read_text())
        assert status["status"] == "completed" and status["slurm_job"] == job["job_id"]
        assert ", 1 threads," in (Path(job["dir"]) / "train.log").read_text()  # cpus_per_task


def test_a_cancelled_job_is_reported_in_one_line_and_a_rerun_resumes_it(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    run = ["epochs=2", "limit_train_batches=300"]
    args = ["-m", *slurm, "lr=0.01,0.001", *run, *QUICK, f"hydra.sweep.dir={sweep}"]
    proc = start(args, cwd=tmp_path)
    victim = sweep / "epochs=2,lr=0.001"
    wait_for_epoch(victim, 1, proc, timeout=300)
    job = next(j["job_id"] for j in jobs_of(sweep).values() if Path(j["dir"]) == victim)
    subprocess.run(["scancel", job], check=True, timeout=30)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("  epochs=2,lr=0.001:"))
    assert f"Slurm job {job} CANCELLED" in line and ".submitit" in line and "log:" in line
    status = json.loads((victim / "status.json").read_text())
    assert status["status"] == "interrupted" and status["slurm_state"].startswith("CANCELLED")
    run_train(args, cwd=tmp_path, timeout=600)  # the same command: it resumes the job
    assert "resuming" in (victim / "train.log").read_text()
    assert metrics(victim) == reference(["lr=0.001", *run], tmp_path, "reference")


def test_a_job_warned_of_its_time_limit_is_requeued_and_finishes_on_its_own(slurm, tmp_path):
    """After epoch 1 the test sends the job SIGUSR2, the signal Slurm sends `signal_delay_s`
    ahead of a time limit (its own timing has a resolution of 30 to 60 s, too coarse to aim at an
    epoch). From there all is real: the run saves, submitit requeues the job through Slurm, and
    the requeued job resumes from its checkpoint. Slurm holds a requeued job for 120 s before it
    may start again (pending, reason BeginTime); the test then starts it at once, as an
    administrator may (`scontrol update StartTime=now`), which saves two minutes."""
    sweep = tmp_path / "sweep"
    run = ["lr=0.01", "epochs=2", "limit_train_batches=300"]
    limits = ["hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30"]
    # no time-limit requeue allowed for a slice without progress: this one finished an epoch
    limits += ["hydra.launcher.max_num_timeout=0"]
    args = ["-m", *slurm, *limits, *run, *QUICK, f"hydra.sweep.dir={sweep}"]
    proc = start(args, cwd=tmp_path)
    run_dir = sweep / "epochs=2,lr=0.01"
    wait_for_epoch(run_dir, 1, proc, timeout=300)
    (job,) = jobs_of(sweep).values()
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True, timeout=30)
    release_when_requeued(job["job_id"], proc)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "signal 12: stopping after this batch" in Path(job["log"]).read_text()
    assert "resuming" in log and "this job is timed-out" in Path(job["log"]).read_text(), log
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["last_epoch"] == 2
    assert metrics(run_dir) == reference(run, tmp_path, "reference")


def test_a_slice_that_finished_no_epoch_counts_against_max_num_timeout(slurm, tmp_path):
    """The other side of the requeue above: warned before it finished an epoch, with no
    requeue left for such slices, the job ends `interrupted` in one line (a rerun continues it)."""
    sweep = tmp_path / "sweep"
    limits = ["hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30"]
    limits += ["hydra.launcher.max_num_timeout=0"]
    run = ["lr=0.01", "epochs=1", "batch_size=4"]  # one epoch of 13,750 steps: the warning is early
    proc = start(["-m", *slurm, *limits, *run, *QUICK, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    run_dir = sweep / "batch_size=4,epochs=1,lr=0.01"
    wait_for_epoch(run_dir, 0, proc, timeout=300)  # status.json written: the run is training
    (job,) = jobs_of(sweep).values()
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True, timeout=30)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert f"Slurm job {job['job_id']}: Job not requeued because: timed-out too many times" in out
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["last_epoch"] == 0


def test_submitting_without_waiting_returns_at_once_and_compare_reports_later(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *slurm, "hydra.launcher.wait=false", "lr=0.01,0.001", "epochs=1"]
    done = run_train(
        [*args, "limit_train_batches=20", *QUICK, f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert "2 job(s) submitted to Slurm" in done.stdout and f"fmnist-compare {sweep}" in done.stdout
    ids = [j["job_id"] for j in jobs_of(sweep).values()]
    deadline = time.time() + 300
    while set(slurm_states(ids).values()) != {"COMPLETED"}:
        assert time.time() < deadline, slurm_states(ids)
        time.sleep(1)
    report = subprocess.run(
        [sys.executable, "-m", "fmnist.commands.compare", str(sweep), "--no-write"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert all(f"{i} COMPLETED" in report.stdout for i in ids), report.stdout
    assert report.stdout.count("completed") >= 2


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_run_on_another_host_is_never_called_crashed_while_its_job_runs(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *slurm, "lr=0.01", "epochs=2", "limit_train_batches=400", *QUICK]
    proc = start([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    run_dir = sweep / "epochs=2,lr=0.01"
    wait_for_epoch(run_dir, 0, proc, timeout=300)  # status.json written: the job is training
    job = json.loads((run_dir / "status.json").read_text())["slurm_job"]

    def seen_from(host: str) -> str:
        code = (
            "import json, sys; from fmnist.run.status import where_running; "
            "print(json.dumps(where_running(json.load(open(sys.argv[1])))))"
        )
        done = subprocess.run(
            [
                "unshare",
                "--uts",
                "sh",
                "-c",
                f'hostname {host} && exec "$@"',
                "sh",
                sys.executable,
                "-c",
                code,
                str(run_dir / "status.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    state, why = seen_from("login-node")
    assert state == "running" and f"running on {socket.gethostname()} (Slurm job {job})" in why
    subprocess.run(["scancel", job], check=True, timeout=30)
    proc.communicate(timeout=600)
    status = json.loads((run_dir / "status.json").read_text())
    status["status"] = "running"  # as a job killed outright (node failure) leaves it
    (run_dir / "status.json").write_text(json.dumps(status))
    state, why = seen_from("login-node")
    assert state == "crashed" and f"Slurm job {job} ended (CANCELLED" in why


def test_an_optuna_search_runs_its_trials_as_slurm_jobs(slurm, tmp_path):
    """Two trials at once as one array job: each reports every epoch to the study's journal file
    from its Slurm job, and the search tells the study how each ended."""
    import optuna

    from fmnist.sweeps.search import JOURNAL, open_storage

    sweep = tmp_path / "sweep"
    args = [*slurm, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    args += ["epochs=2", "limit_train_batches=5", "data.val_size=1000", *QUICK]
    run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    study = optuna.load_study(study_name="fmnist", storage=open_storage(str(sweep / JOURNAL)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.intermediate_values.keys() == {1, 2} for t in study.trials)
    jobs = {Path(j["dir"]).name: j["job_id"] for j in jobs_of(sweep).values()}
    for trial in study.trials:
        status = json.loads((sweep / f"trial_00{trial.number}" / "status.json").read_text())
        assert status["slurm_job"] == jobs[f"trial_00{trial.number}"]
        assert status["objective"] == trial.value


@pytest.mark.parametrize("ended", ["completed", "running"])
def test_a_job_whose_result_file_is_lost_is_what_its_run_status_says(tmp_path, monkeypatch, ended):
    """Slurm killed the job (time limit, node loss) after or before its run ended: a run that says
    it completed keeps its status and objective; one that did not is interrupted, to resume."""
    from types import SimpleNamespace

    from fmnist.run.status import read_status, write_status
    from fmnist.sweeps import slurm

    def lost() -> list:
        raise RuntimeError("no result file")

    job = SimpleNamespace(job_id="7", state="TIMEOUT", results=lost,
                          paths=SimpleNamespace(stderr=tmp_path / "7.err"))  # fmt: skip
    monkeypatch.setattr(slurm, "wait_for", lambda job: None)
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {"7": "TIMEOUT"})
    write_status(tmp_path, status=ended, objective=0.91)
    ret = slurm._result(job, ["seed=0"], tmp_path)
    if ended == "completed":
        assert ret.status.name == "COMPLETED" and ret.return_value == 0.91
        assert read_status(tmp_path)["status"] == "completed"
    else:
        assert ret.status.name == "FAILED" and "TIMEOUT" in str(ret._return_value)
        assert read_status(tmp_path)["status"] == "interrupted"
