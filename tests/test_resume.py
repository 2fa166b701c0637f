"""Crashes, signals, failures and restarts, with real processes on the real data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import DATA, ROOT, SWEEP4, TRAINED_RUN, run_train

pytestmark = pytest.mark.slow
QUICK = ["limit_test_batches=2"]


def metrics(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "results.json").read_text())
    return [{k: v for k, v in r.items() if "duration" not in k and k != "run"} for r in rows]


def start(args: list[str], cwd: Path, new_group: bool = False) -> subprocess.Popen:
    """`train.py` in the background; `new_group`: its own process group, as a terminal gives."""
    env = {**os.environ, "FMNIST_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_group,
    )


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((run_dir / "status.json").read_text()).get("last_epoch", 0) >= epoch:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise TimeoutError(f"epoch {epoch} of {run_dir} not reached")


def test_kill9_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    args = ["epochs=3", "limit_train_batches=120", *QUICK]
    run_train([*args, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    crashed = tmp_path / "crashed"
    proc = start([*args, f"hydra.run.dir={crashed}"], cwd=tmp_path)
    wait_for_epoch(crashed, 1, proc)
    assert (crashed / "checkpoints" / "last.pt").exists()  # written before status says epoch 1
    time.sleep(0.3)  # well into epoch 2 (an epoch here takes a second or more)
    proc.kill()
    proc.wait()
    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "running" and status["last_epoch"] < 3  # died mid-run
    done = run_train([f"resume={crashed}"], cwd=tmp_path)
    assert f"resuming {crashed}" in done.stdout + done.stderr
    assert metrics(crashed) == metrics(tmp_path / "reference")
    assert json.loads((crashed / "status.json").read_text())["status"] == "completed"
    acc = EventAccumulator(str(crashed))
    acc.Reload()
    assert [e.step for e in acc.Scalars("Accuracy/test")] == [1, 2, 3]  # no duplicate, none missing


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_batch_and_saves(tmp_path, sig):
    run_dir = tmp_path / "run"
    # 100 batches an epoch: the signal lands with 19 epochs still to train, even on a fast CPU
    proc = start(
        ["epochs=20", "limit_train_batches=100", *QUICK, f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    wait_for_epoch(run_dir, 1, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["error"]["type"] == "RunInterrupted"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == status["last_epoch"] >= 1
    assert len(json.loads((run_dir / "results.json").read_text())) == last["epoch"]
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert len(acc.Scalars("Loss/train")) == last["epoch"]  # TensorBoard was flushed


def test_sweep_with_a_diverging_job_reports_it_and_resumes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "lr=0.001,1e12",
        "epochs=2",
        "limit_train_batches=30",
        *QUICK,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = run_train(args, cwd=tmp_path, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    good, bad = sweep_dir / "epochs=2,lr=0.001", next(sweep_dir.glob("epochs=2,lr=1*"))
    assert json.loads((good / "status.json").read_text())["status"] == "completed"
    failed = json.loads((bad / "status.json").read_text())
    assert failed["status"] == "failed" and failed["error"]["type"] == "NonFiniteLossError"
    assert "1 of 2 jobs did not complete" in out and f"{bad.name}: failed" in out
    log = (bad / "train.log").read_text()
    assert "Traceback" in log and "NonFiniteLossError" in log  # the failed job's own log
    summary = (sweep_dir / "summary.csv").read_text()
    assert "failed" in summary and "completed" in summary

    before = (good / "results.json").stat().st_mtime_ns
    again = run_train(args, cwd=tmp_path, check=False)  # rerun: completed skipped, failed rerun
    assert "nothing to do" in again.stdout + again.stderr
    assert (good / "results.json").stat().st_mtime_ns == before
    assert "NonFiniteLossError" in json.loads((bad / "status.json").read_text())["error"]["type"]


def test_rerunning_a_finished_sweep_trains_nothing(sweep4, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(sweep4, sweep_dir)  # the session's finished 4-job sweep, left untouched
    args = [*SWEEP4, f"hydra.sweep.dir={sweep_dir}"]  # its command, into the copy
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("results.json")}
    assert len(stamps) == 4
    done = run_train(args, cwd=tmp_path)
    assert (done.stdout + done.stderr).count("nothing to do") == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("results.json")}


def test_a_directory_holding_another_run_is_not_overwritten(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)  # the session's finished run, left untouched
    before = (run_dir / "results.json").read_text()
    done = run_train(  # its command but for lr
        ["lr=0.5", *TRAINED_RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode != 0 and "already holds a different run" in done.stderr
    assert "lr: 0.01 -> 0.5" in done.stderr
    assert (run_dir / "results.json").read_text() == before


def test_resume_a_completed_run_with_more_epochs(tmp_path):
    """With a schedule, trained on is as long as the new epochs say: one-cycle ends at its end.
    (Without one, a completed run trained on: tests/test_faults.py's old-status resume.)"""
    run_dir, fresh = tmp_path / "run", tmp_path / "fresh"
    first = ["epochs=1", "limit_train_batches=3", "scheduler=onecycle", *QUICK]
    # a run of 2 epochs from the start, meanwhile: the runs are start-up more than training
    reference = start([*first, "epochs=2", f"hydra.run.dir={fresh}"], cwd=tmp_path)
    try:
        run_train([*first, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        run_train([f"resume={run_dir}", "epochs=2"], cwd=tmp_path)
        out, _ = reference.communicate(timeout=300)
        assert reference.returncode == 0, out[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    rates = [  # the learning rates the run of 2 epochs from the start has
        [row["lr_current"] for row in json.loads((d / "results.json").read_text())]
        for d in (run_dir, fresh)
    ]
    assert rates[0][1] == pytest.approx(rates[1][1], rel=1e-6)


def test_resume_of_a_non_run_is_an_error(tmp_path):
    done = run_train([f"resume={tmp_path}"], cwd=tmp_path, check=False)
    assert done.returncode == 2 and "is not a run directory" in done.stderr
