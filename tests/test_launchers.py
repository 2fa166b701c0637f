"""Sweeps through the other launchers and sweepers, for real, in subprocesses."""

import json
import re

import pytest

from tests.conftest import run_train

pytestmark = pytest.mark.slow
TINY = ["epochs=1", "limit_train_batches=2", "limit_test_batches=1"]


def job_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def statuses(sweep_dir):
    return [json.loads((d / "status.json").read_text())["status"] for d in job_dirs(sweep_dir)]


def test_article_grid_from_yaml(tmp_path):
    sweep = tmp_path / "sweep"
    run_train(["+sweep=article", *TINY, "callbacks=none", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    names = [d.name for d in job_dirs(sweep)]
    assert len(names) == 8 and "batch_size=100,epochs=1,lr=0.01,shuffle=False" in names
    assert statuses(sweep) == ["completed"] * 8


def test_joblib_launcher_runs_jobs_in_parallel_with_one_thread_each(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "lr=0.01,0.001", "batch_size=100,1000", *TINY]
    env = {"OMP_NUM_THREADS": "2"}  # a parent environment that would oversubscribe the cores
    done = run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env)
    assert statuses(sweep) == ["completed"] * 4
    logs = [(d / "train.log").read_text() for d in job_dirs(sweep)]
    threads = [int(re.search(r"(\d+) threads", log).group(1)) for log in logs]
    assert threads == [1, 1, 1, 1]  # 2 cores / 2 parallel jobs, whatever OMP_NUM_THREADS says
    assert "Joblib" in done.stdout + done.stderr


def test_submitit_local_runs_the_cluster_path(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "lr=0.01,0.001",
        *TINY,
    ]
    run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert statuses(sweep) == ["completed"] * 2
    assert all("1 threads" in (d / "train.log").read_text() for d in job_dirs(sweep))
    assert (sweep / ".submitit").is_dir()


def test_slurm_config_composes_with_the_usual_fields(tmp_path):
    done = run_train(
        ["hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher"], cwd=tmp_path
    )
    for field in (
        "partition",
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "array_parallelism",
    ):
        assert f"{field}:" in done.stdout
    assert "SlurmLauncher" in done.stdout
