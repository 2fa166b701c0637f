"""`python train.py` as users type it, in subprocesses, on the real data."""

import json
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_train

pytestmark = pytest.mark.slow
SCALARS = {"Loss/train", "Accuracy/train", "Loss/test", "Accuracy/test", "Number Correct/train"}


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_single_run_writes_its_own_directory(tmp_path):
    done = run_train(["epochs=2", "limit_train_batches=4", "limit_test_batches=2"], cwd=tmp_path)
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, runs
    run = runs[0]
    for name in (
        "results.csv",
        "results.json",
        "status.json",
        "train.log",
        ".hydra/config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "confusion_matrix.csv",
    ):
        assert (run / name).exists(), name
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert "test_accuracy" in done.stdout + done.stderr  # the per-epoch table


def test_sweep_exactly_as_typed(tmp_path):
    done = run_train(
        [
            "-m",
            "lr=0.01,0.001",
            "batch_size=100,1000",
            "limit_train_batches=3",
            "limit_test_batches=1",
            "epochs=2",
        ],
        cwd=tmp_path,
    )
    sweeps = list((tmp_path / "outputs" / "sweeps").glob("*/*"))
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == sorted(
        f"batch_size={b},epochs=2,lr={lr}" for b in (100, 1000) for lr in (0.01, 0.001)
    )
    for job in jobs:
        run = sweeps[0] / job
        rows = json.loads((run / "results.json").read_text())
        assert [r["epoch"] for r in rows] == [1, 2]
        assert {str(rows[0]["lr"]), str(rows[0]["batch_size"])} == set(
            part.split("=")[1] for part in job.split(",") if not part.startswith("epochs")
        )
        acc = events(run)
        tags = acc.Tags()
        assert set(tags["scalars"]) >= SCALARS
        assert [e.step for e in acc.Scalars("Accuracy/test")] == [1, 2]
        assert "conv1.weight" in tags["histograms"] and "conv1.weight.grad" in tags["histograms"]
        assert "images" in tags["images"] and "ConfusionMatrix/test" in tags["images"]
        assert tags["graph"] is True
    assert "sweep summary" in done.stdout and (sweeps[0] / "summary.csv").exists()


def test_two_sweeps_in_the_same_second_do_not_share_a_directory(tmp_path):
    import subprocess
    import sys

    from tests.conftest import DATA, ROOT

    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "epochs=1",
        "limit_train_batches=1",
        "limit_test_batches=1",
        "callbacks=none",
    ]
    env = {**os.environ, "FMNIST_DATA": str(DATA)}
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert len(list((tmp_path / "outputs" / "sweeps").glob("*/*"))) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["lr=abc"], "lr"),
        (["lr=0"], "lr=0.0 is invalid"),
        (["batch_size=0"], "batch_size=0 is invalid"),
        (["epochs=0"], "epochs=0 is invalid"),
        (["budget_min=0"], "budget_min=0.0 is invalid"),
        (["budget_min=0.001"], "budget_min=0.001 is too short here"),
        (["budget_min=1", "epochs=2"], "budget_min=1.0 and epochs=2 are both given"),
        (["model=foo"], "seed_cnn"),
        (["optimizer=nope"], "adamw"),
        (["colour=red"], "colour"),
        (["runtime.cuda_graphs=true", "device=cpu"], "runtime.cuda_graphs=true needs a CUDA"),
        (["eval_every=${lr}"], "'0.01' of type 'float' could not be converted to Integer"),
        (
            ["-m", "hparams_search=optuna", "hydra.sweeper.n_jobs=0"],
            "n_jobs >= 1 or null (the pool's slots, else 1)",
        ),
    ],
)
def test_bad_input_is_a_short_error_without_traceback(tmp_path, args, needle):
    done = run_train(args, cwd=tmp_path, check=False)
    assert done.returncode != 0
    assert needle in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 20


def test_diverging_single_run_is_one_clear_line(tmp_path):
    run_dir = tmp_path / "run"
    done = run_train(
        ["lr=1e12", "epochs=1", "limit_train_batches=50", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    assert "error: loss became" in done.stderr and "lower the learning rate" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "Traceback" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    """A typo costs a second, not torch's import (3 s on a slow CPU): the command line, the
    schema and the metric table import no torch, and a value out of range fails before it."""
    from tests.conftest import ROOT, imported_torch, run_importing

    done, imported = run_importing([str(ROOT / "train.py"), "lr=0"], cwd=tmp_path)
    assert done.returncode == 2 and "error: lr=0.0 is invalid" in done.stderr, done.stderr[-2000:]
    assert "fmnist.config" in imported and "fmnist.metrics" in imported
    assert not imported_torch(imported)
