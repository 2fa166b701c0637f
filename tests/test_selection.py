"""Selection on validation, never on test; provenance; self-describing checkpoints; bf16 auto."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from fmnist.commands.compare import summarize
from fmnist.engine.runner import train
from fmnist.engine.runtime import decide_bf16
from fmnist.run import provenance
from tests.conftest import ROOT, compose_cfg, run_command


def fake_run(run_dir, vals, tests, monitor="val_accuracy"):
    """A run directory whose validation and test accuracy peak at different epochs."""
    run_dir.mkdir(parents=True)
    rows = [
        {
            "run": run_dir.name,
            "epoch": e + 1,
            "loss": 0.5,
            "accuracy": 0.8,
            "val_accuracy": v,
            "val_loss": 1 - v,
            "test_accuracy": t,
            "test_loss": 1 - t,
            "run_duration": 10.0 * (e + 1),
            "lr": 0.01,
        }
        for e, (v, t) in enumerate(zip(vals, tests, strict=True))
    ]
    (run_dir / "results.json").write_text(json.dumps(rows))
    status = {
        "status": "completed",
        "last_epoch": len(rows),
        "hparams": {"lr": 0.01, "seed": 0},
        "monitor": monitor,
    }
    (run_dir / "status.json").write_text(json.dumps(status))


def test_compare_reports_test_accuracy_at_the_validation_selected_epoch(tmp_path):
    fake_run(tmp_path / "a", vals=[0.80, 0.90, 0.85], tests=[0.79, 0.86, 0.95])  # test peaks at 3
    fake_run(tmp_path / "b", vals=[0.88, 0.89, 0.87], tests=[0.97, 0.90, 0.91])  # test peaks at 1
    table = summarize(tmp_path).table.set_index("run")
    assert list(table.index) == ["a", "b"]  # ranked by validation (0.90 > 0.89), not test
    assert table.loc["a", "selected_epoch"] == 2 and table.loc["a", "test_accuracy"] == 0.86
    assert table.loc["a", "last_test_accuracy"] == 0.95
    assert table.loc["b", "selected_epoch"] == 2 and table.loc["b", "test_accuracy"] == 0.90
    assert "best_test_accuracy" not in table.columns
    assert "ranked by val_accuracy" in summarize(tmp_path).note


def test_without_validation_nothing_is_selected(tmp_path):
    fake_run(tmp_path / "a", vals=[0.8, 0.9], tests=[0.9, 0.8], monitor=None)
    for row in (tmp_path / "a" / "results.json",):
        rows = [
            {k: v for k, v in r.items() if not k.startswith("val")}
            for r in json.loads(row.read_text())
        ]
        row.write_text(json.dumps(rows))
    summary = summarize(tmp_path)
    assert summary.monitor is None and "nothing was selected" in summary.note
    assert (
        summary.table.loc[0, "selected_epoch"] == 2 and summary.table.loc[0, "test_accuracy"] == 0.8
    )


def test_best_checkpoint_follows_validation_and_status_keeps_the_objective(cfg_quick, tmp_path):
    cfg_quick.epochs, cfg_quick.limit_train_batches = 4, 20
    train(cfg_quick)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert all("val_accuracy" in r for r in rows)
    chosen = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == chosen["epoch"] and best["best"]["metric"] == "val_accuracy"
    status = json.loads((tmp_path / "status.json").read_text())
    assert (
        status["objective"] == chosen["val_accuracy"] and status["best"]["epoch"] == chosen["epoch"]
    )
    assert status["best"]["test_accuracy"] == chosen["test_accuracy"]


def test_article_preset_selects_nothing(data_root, tmp_path):
    cfg = compose_cfg(
        ["experiment=article", "epochs=2", "limit_train_batches=3", "limit_test_batches=2"],
        data_root,
        output_dir=tmp_path,
    )
    assert cfg.data.val_size == 0
    train(cfg)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best"]["metric"] is None  # the last epoch


def test_provenance_in_every_run_and_sweep_job(sweep4):
    # the session's real sweep (lr x batch_size), only read here: no sweep of its own to pay for
    jobs = sorted(p.parent for p in sweep4.rglob("status.json"))
    assert len(jobs) == 4
    for job in jobs:
        record = json.loads((job / "provenance.json").read_text())
        assert record["git"]["source"] == str(ROOT)
        assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
        assert (
            record["versions"]["torch"] == str(torch.__version__)
            and record["versions"]["hydra-core"]
        )
        assert record["hardware"]["cpu"] and "avx512_bf16" in record["hardware"]["cpu_flags"]
        assert record["hardware"]["threads"] >= 1 and record["hostname"] and record["started"]
        assert any(o.startswith("lr=") for o in record["overrides"])
        assert record["bf16"].startswith("runtime.bf16=")
        if record["git"]["dirty"]:
            assert (job / "provenance.diff").read_text().startswith("diff --git")


def test_a_dirty_tree_saves_its_diff_and_no_git_still_works(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "code.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    monkeypatch.setattr(provenance, "checkout", lambda: repo)
    clean, diff = provenance.git_state()
    assert clean["dirty"] is False and diff == "" and len(clean["commit"]) == 40
    (repo / "code.py").write_text("a = 2\n")
    dirty, diff = provenance.git_state()
    assert dirty["dirty"] is True and "-a = 1" in diff and "+a = 2" in diff
    assert provenance.short({"git": dirty}) == dirty["commit"][:7] + "+dirty"
    monkeypatch.setattr(provenance, "checkout", lambda: tmp_path / "not-a-repo")
    (tmp_path / "not-a-repo").mkdir()
    outside, diff = provenance.git_state()
    assert outside["commit"] is None and provenance.short({"git": outside}) == "no-git"
    monkeypatch.setattr(provenance, "checkout", lambda: None)  # installed from a wheel
    installed, diff = provenance.git_state()
    assert installed["commit"] is None and installed["source"] == str(provenance.PACKAGE)


def test_checkpoint_alone_evaluates_and_predicts_like_the_run(trained_run, tmp_path, capsys):
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(trained_run / "checkpoints" / "best.pt", alone / "best.pt")
    # the commands' own main() in this process: the test is of what they compute, not start-up

    on_run = run_command("evaluate", trained_run, capsys=capsys)
    on_file = run_command("evaluate", alone / "best.pt", capsys=capsys)
    assert on_run.returncode == 0 and on_file.returncode == 0, on_file.stderr
    a = json.loads((trained_run / "evaluation.json").read_text())
    b = json.loads((alone / "evaluation.json").read_text())
    assert a["accuracy"] == b["accuracy"] and a["confusion"] == b["confusion"]
    example = ROOT / "docs" / "examples" / "trousers.png"
    p1, p2 = (
        run_command("predict", trained_run, example, "--json", capsys=capsys),
        run_command("predict", alone / "best.pt", example, "--json", capsys=capsys),
    )
    assert p1.returncode == 0 and json.loads(p1.stdout) == json.loads(p2.stdout)
    ckpt = torch.load(alone / "best.pt", weights_only=True)  # still loads without pickled code
    assert ckpt["model_config"]["target"] == "fmnist.models.seed_cnn.SeedCNN"
    assert ckpt["classes"][0] == "T-shirt/top" and ckpt["input"]["shape"] == [1, 28, 28]
    assert ckpt["provenance"]["versions"]["torch"]


@pytest.mark.parametrize(
    ("setting", "device", "flags", "on"),
    [
        ("auto", "cpu", {"avx512f", "avx512_bf16"}, True),
        ("auto", "cpu", {"avx512f", "amx_bf16"}, True),
        ("auto", "cpu", {"avx512f", "avx512_vnni"}, False),  # e.g. Cascade Lake: emulated bf16
        ("auto", "cuda", {"avx512_bf16"}, False),
        (True, "cpu", set(), True),
        (False, "cpu", {"avx512_bf16"}, False),
    ],
)
def test_bf16_auto_decides_from_the_hardware(setting, device, flags, on):
    decided, why = decide_bf16(setting, torch.device(device), flags)
    assert decided is on and why.startswith(f"runtime.bf16={str(setting).lower()}")


def test_best_preset_logs_its_bf16_decision(data_root, tmp_path):
    run_dir = tmp_path / "run"
    # in-process: the decision, its log line and provenance.json are the engine's, not the CLI's
    cfg = compose_cfg(
        [
            "experiment=best_bn_cnn",
            "epochs=1",
            "limit_train_batches=2",
            "limit_test_batches=1",
            "callbacks.tensorboard=null",
            "callbacks.progress.bar=false",
        ],
        data_root,
        output_dir=run_dir,
    )
    train(cfg)
    first = next(
        line for line in (run_dir / "train.log").read_text().splitlines() if "parameters" in line
    )
    expected = decide_bf16("auto", torch.device("cpu"))[1]
    assert expected in first
    assert json.loads((run_dir / "provenance.json").read_text())["bf16"] == expected
