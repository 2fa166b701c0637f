"""The sweep summary on a real 4-job sweep, plus failed and incomplete runs."""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from fmnist.commands.compare import main, summarize
from tests.conftest import imported_torch, run_importing

pytestmark = pytest.mark.slow


@pytest.fixture
def sweep(sweep4, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep4, copy)
    for name in ("summary.csv", "summary.json", "summary.md", "summary.png"):
        (copy / name).unlink(missing_ok=True)
    return copy


def test_rows_sorting_and_varying_columns(sweep):
    summary = summarize(sweep)
    table = summary.table
    assert len(table) == 4
    assert summary.varying == ["batch_size", "lr"]
    assert summary.constants["model"] == "seed_cnn" and summary.constants["epochs"] == 2
    assert summary.monitor == "val_accuracy"
    objective = list(table["val_accuracy"])
    assert objective == sorted(objective, reverse=True)  # ranked by validation, never by test
    for row in table.itertuples():
        history = json.loads((sweep / row.run / "results.json").read_text())
        chosen = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
        assert row.selected_epoch == chosen["epoch"] and row.val_accuracy == chosen["val_accuracy"]
        assert row.test_accuracy == chosen["test_accuracy"]  # of the selected checkpoint
        assert row.last_test_accuracy == history[-1]["test_accuracy"]
        assert row.status == "completed" and row.epochs == 2
    by_loss = summarize(sweep, sort="train_loss").table["train_loss"].tolist()
    assert by_loss == sorted(by_loss)
    assert len(summarize(sweep, top=2).table) == 2
    first_epoch = summarize(sweep, epoch=1).table
    assert set(first_epoch["epochs"]) == {1}


def test_failed_and_incomplete_runs_are_listed_not_dropped(sweep):
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    failed, crashed = runs[0], runs[1]
    status = json.loads((failed / "status.json").read_text())
    status |= {
        "status": "failed",
        "error": {"type": "NonFiniteLossError", "message": "loss became nan"},
    }
    (failed / "status.json").write_text(json.dumps(status))
    status = json.loads((crashed / "status.json").read_text())
    status |= {
        "status": "running",
        "pid": 2**22 + 12345,
        "last_epoch": 1,
    }  # a pid that is not alive
    (crashed / "status.json").write_text(json.dumps(status))
    history = json.loads((crashed / "results.json").read_text())[:1]
    (crashed / "results.json").write_text(json.dumps(history))
    table = summarize(sweep).table.set_index("run")
    assert table.loc[failed.name, "status"] == "failed"
    assert "NonFiniteLossError" in table.loc[failed.name, "reason"]
    assert table.loc[crashed.name, "status"] == "crashed" and table.loc[crashed.name, "epochs"] == 1
    assert len(table) == 4


def test_files_written_and_png_decodes(sweep, capsys):
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "selected_epoch" in out and "batch_size=100,epochs=2,lr=0.01" in out
    assert "best_test_accuracy" not in out and "ranked by val_accuracy" in out
    for ext in ("csv", "json", "md", "png"):
        assert (sweep / f"summary.{ext}").stat().st_size > 0
    with Image.open(sweep / "summary.png") as image:
        image.load()
        assert image.width >= 800 and image.height >= 300
    assert json.loads((sweep / "summary.json").read_text())["varying"] == ["batch_size", "lr"]
    assert (sweep / "summary.md").read_text().count("\n| batch_size=") == 4


def test_comparing_runs_imports_no_torch(sweep):
    """Reading records is pandas and matplotlib: torch's import (3-5 s) is not paid for it."""
    done, imported = run_importing(["-m", "fmnist.commands.compare", str(sweep)], cwd=sweep)
    assert done.returncode == 0 and "ranked by val_accuracy" in done.stdout, done.stderr[-2000:]
    assert "fmnist.run.provenance" in imported and "pandas" in imported
    assert not imported_torch(imported)


def test_outputs_root_compares_everything(sweep):
    (sweep / "nested").mkdir()
    shutil.copytree(sweep / "batch_size=100,epochs=2,lr=0.01", sweep / "nested" / "other")
    assert len(summarize(sweep).table) == 5


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_path_is_a_one_line_error(tmp_path, make):
    path = tmp_path / "nothing"
    if make == "empty":
        path.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.commands.compare", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error:")


def test_mean_and_spread_over_seeds(sweep, capsys):
    """Runs that differ only by seed are summarized as mean and sample sd per configuration."""
    finals = {}
    for i, run in enumerate(sorted(p for p in sweep.iterdir() if p.is_dir())):
        status = json.loads((run / "status.json").read_text())
        status["hparams"] |= {"lr": 0.01, "seed": i % 2}  # two seeds of each batch size
        (run / "status.json").write_text(json.dumps(status))
        bs = status["hparams"]["batch_size"]
        history = json.loads((run / "results.json").read_text())
        final = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))["test_accuracy"]
        finals.setdefault(bs, []).append(final)
    summary = summarize(sweep)
    assert summary.varying == ["batch_size", "seed"]
    seeds = summary.seeds.set_index("batch_size")
    for bs, values in finals.items():
        mean = sum(values) / 2
        sd = abs(values[0] - values[1]) / 2**0.5  # sample sd of two values
        assert seeds.loc[bs, "seeds"] == 2
        assert seeds.loc[bs, "mean_test_accuracy"] == pytest.approx(mean)
        assert seeds.loc[bs, "sd_test_accuracy"] == pytest.approx(sd)
        assert seeds.loc[bs, "min_test_accuracy"] == min(values)
    assert main([str(sweep)]) == 0
    assert "Across seeds" in capsys.readouterr().out
    written = json.loads((sweep / "summary.json").read_text())["across_seeds"]
    assert sorted(r["batch_size"] for r in written) == [100, 1000]
    assert summarize(sweep, top=1).seeds is not None  # --top cuts rows, not the seed means


def test_no_seed_summary_without_repeated_seeds(sweep):
    assert summarize(sweep).seeds is None
