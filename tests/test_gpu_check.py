"""scripts/gpu_check.py, the prepared GPU check, where no GPU is: its parts that must hold on any
machine (a step cut at its time limit leaves no process behind; the pool's figure reads its jobs'
files) and its answer without CUDA."""

import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

SPAWNS = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "print('child', child.pid, flush=True); time.sleep(120)"
)


def test_a_step_past_its_limit_is_killed_with_every_process_it_started(tmp_path):
    log = tmp_path / "check.log"
    status, seconds, tail = gpu_check.run([sys.executable, "-c", SPAWNS], 3.0, tmp_path, log)
    assert status == "timeout" and seconds < 60, (status, seconds)
    assert tail.startswith("child ")
    child = int(tail.split()[1])
    with contextlib.suppress(psutil.NoSuchProcess):  # gone already: killed and reaped
        proc = psutil.Process(child)
        _, alive = psutil.wait_procs([proc], timeout=10)  # a kill takes a moment to land
        assert not alive or proc.status() == psutil.STATUS_ZOMBIE, "the child outlived its limit"
    status, _, tail = gpu_check.run([sys.executable, "-c", "print('done')"], 30, tmp_path, log)
    assert (status, tail) == ("ok", "done")
    assert "$ " in log.read_text() and log.read_text().count("\n$ ") == 2  # both steps' output


def job(sweep: Path, name: str, device: str, started: str, ended: str) -> None:
    run = sweep / name
    run.mkdir(parents=True)
    hardware = {"device": device, "cuda_visible_devices": device[-1:]}
    (run / "provenance.json").write_text(json.dumps({"hardware": hardware, "slot": {"index": 0}}))
    status = {"status": "completed", "started": started, "ended": ended}
    (run / "status.json").write_text(json.dumps(status))


def test_the_pool_figure_says_where_each_job_ran_and_whether_jobs_overlapped(tmp_path):
    job(tmp_path / "a", "seed=0", "cuda:0", "2026-12-03T10:00:00", "2026-12-03T10:00:30")
    job(tmp_path / "a", "seed=1", "cuda:0", "2026-12-03T10:00:10", "2026-12-03T10:00:40")
    figure = gpu_check.pool_figure(tmp_path / "a")
    assert len(figure["jobs"]) == 2 and figure["all_on_cuda"] and figure["jobs_overlapped"]
    job(tmp_path / "b", "seed=0", "cuda:0", "2026-12-03T10:00:00", "2026-12-03T10:00:30")
    job(tmp_path / "b", "seed=1", "cpu", "2026-12-03T10:00:30", "2026-12-03T10:00:40")
    figure = gpu_check.pool_figure(tmp_path / "b")
    assert not figure["all_on_cuda"] and not figure["jobs_overlapped"]
    assert gpu_check.pool_figure(tmp_path / "none")["all_on_cuda"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it runs the whole check")
def test_without_cuda_the_check_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "gpu-check: no CUDA GPU here; nothing to check"
    ]
    assert not list(tmp_path.iterdir())  # nothing written
