"""The tools researchers reach for: EMA, TTA, early stopping, gradient clipping, the LR range
test and the debug presets, each on the real data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from fmnist.callbacks.base import Callback
from fmnist.callbacks.early_stopping import EarlyStopping
from fmnist.data.loaders import MemoryLoader
from fmnist.data.tensors import load_tensors
from fmnist.engine.runner import train
from fmnist.evaluation import evaluate
from tests.conftest import CONF, compose_cfg, run_train
from tests.test_resume import metrics, start, wait_for_epoch

QUICK = ["limit_test_batches=2", "callbacks.progress.bar=false"]


def test_early_stopping_stops_at_the_right_epoch_on_a_scripted_metric():
    stopper = EarlyStopping(patience=2)
    state = SimpleNamespace(monitor="val_accuracy", should_stop=None)
    stopped_at = None
    for epoch, value in enumerate([0.50, 0.60, 0.60, 0.59, 0.70], start=1):
        stopper.on_epoch_end(state, {"val_accuracy": value})
        if state.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 4 and "has not improved on 0.6000 for 2 epochs" in state.should_stop
    again = EarlyStopping(patience=2)
    again.load_state_dict(stopper.state_dict())  # resumable: the count goes on
    assert again.wait == 2 and again.best == 0.60
    loss = EarlyStopping(patience=1, min_delta=0.01)
    state = SimpleNamespace(monitor="val_loss", should_stop=None)
    for value in (1.0, 0.995):  # better by less than min_delta: no improvement
        loss.on_epoch_end(state, {"val_loss": value})
    assert state.should_stop


def test_early_stopping_in_a_real_run_completes_and_is_not_rerun(data_root, tmp_path, caplog):
    run_dir = tmp_path / "run"
    args = [
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1",
        "lr=0.5",
        "epochs=8",
        "limit_train_batches=5",
        *QUICK,
    ]
    # in-process: stopping and the rerun's plan are the engine's; two CLI start-ups bought nothing
    train(compose_cfg(args, data_root, output_dir=run_dir))
    status = json.loads((run_dir / "status.json").read_text())
    rows = json.loads((run_dir / "results.json").read_text())
    assert status["status"] == "completed" and status["stopped_early"].startswith("early stopping")
    assert len(rows) < 8 and status["last_epoch"] == len(rows)
    vals = [r["val_accuracy"] for r in rows]
    assert vals[-1] <= max(vals[:-1])  # the last epoch did not improve: that is why it stopped
    caplog.set_level("INFO", logger="fmnist")
    again = train(compose_cfg(args, data_root, output_dir=run_dir))  # the same config, anew
    assert again.get("skipped") and "nothing to do" in caplog.text


def test_tta_gives_a_flipped_test_set_the_same_predictions(trained_run, data_root):
    from fmnist.run.checkpoint import load_trained

    tensors = load_tensors(data_root)
    images, labels = tensors["test_images"][:2000], tensors["test_labels"][:2000]
    model = load_trained(trained_run).model  # trained: no near-ties for float noise to flip
    plain = MemoryLoader(images, labels, 500)
    flipped = MemoryLoader(images.flip(-1), labels, 500)
    with_tta = [evaluate(model, loader, tta=True) for loader in (plain, flipped)]
    assert with_tta[0]["confusion"] == with_tta[1]["confusion"] and with_tta[0]["tta"]
    assert with_tta[0]["loss"] == pytest.approx(with_tta[1]["loss"], rel=1e-5)
    without = [evaluate(model, loader) for loader in (plain, flipped)]
    assert without[0]["confusion"] != without[1]["confusion"]  # the control: flips do matter


def test_tta_is_recorded_and_used_by_evaluate_and_predict(cfg_quick, tmp_path):
    cfg_quick.tta = True
    train(cfg_quick)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[-1]["tta"] is True
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.commands.evaluate", str(tmp_path), "--split", "val"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "with flip TTA" in done.stdout
    result = json.loads((tmp_path / "evaluation.json").read_text())
    chosen = next(r for r in rows if r["epoch"] == result["epoch"])
    assert result["tta"] is True and result["accuracy"] == chosen["val_accuracy"]
    no_tta = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist.commands.evaluate",
            str(tmp_path),
            "--split",
            "val",
            "--no-tta",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_tta.returncode == 0 and "TTA" not in no_tta.stdout.splitlines()[0]


class GradNorm(Callback):
    def __init__(self):
        self.norms = []

    def on_batch_end(self, state, batch_idx):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_gradient_clipping_bounds_the_global_norm(cfg_quick):
    from omegaconf import open_dict

    probe = GradNorm()
    with open_dict(cfg_quick):
        cfg_quick.grad_clip = 0.05
        cfg_quick.callbacks["grad_norm"] = {"_target_": "tests.test_tools.make_probe"}
    PROBE[0] = probe
    train(cfg_quick)
    assert len(probe.norms) == 6 and max(probe.norms) <= 0.05 * 1.001


PROBE: list = [None]


def make_probe():
    return PROBE[0]


def test_ema_resume_after_kill9_equals_an_uninterrupted_run(tmp_path):
    args = ["ema.decay=0.9", "epochs=3", "limit_train_batches=120", *QUICK]
    run_train([*args, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    crashed = tmp_path / "crashed"
    proc = start([*args, f"hydra.run.dir={crashed}"], cwd=tmp_path)
    wait_for_epoch(crashed, 1, proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    run_train([f"resume={crashed}"], cwd=tmp_path)
    assert metrics(crashed) == metrics(tmp_path / "reference")
    ckpt = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["ema_updates"] == 3 * 120 and "train_model" in ckpt  # EMA and raw weights kept
    reference = torch.load(tmp_path / "reference" / "checkpoints" / "last.pt", weights_only=True)
    for key, value in ckpt["model"].items():
        assert torch.equal(value, reference["model"][key]), key


def test_ema_weights_are_what_is_evaluated(cfg_quick, tmp_path):
    cfg_quick.ema.decay = 0.5
    train(cfg_quick)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert any(not torch.equal(ckpt["model"][k], ckpt["train_model"][k]) for k in ckpt["model"])
    from fmnist.run.checkpoint import load_trained

    loaded = load_trained(tmp_path, "last").model.state_dict()
    assert all(torch.equal(loaded[k], ckpt["model"][k]) for k in loaded)


def test_lr_finder_writes_a_plot_and_a_value_in_range_and_no_run(tmp_path, data_root):
    out = tmp_path / "lrf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist.commands.lr_find",
            f"data.root={data_root}",
            "--steps",
            "60",
            "--min",
            "1e-5",
            "--max",
            "10",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "lr_find.json").read_text())
    assert (
        1e-5 <= result["suggested_lr"] <= 10 and len(result["lrs"]) == len(result["losses"]) >= 10
    )
    assert result["lrs"] == sorted(result["lrs"])
    assert (out / "lr_find.png").stat().st_size > 10_000 and "suggested lr" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    bad = subprocess.run(
        [sys.executable, "-m", "fmnist.commands.lr_find", "model=nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_debug_overfit_memorizes_its_batches_with_every_model_in_the_zoo(data_root, tmp_path):
    """One real multirun over every file in conf/model/ (one process, jobs one after another:
    under joblib the ResNet's single thread was the long pole, 68 s against 41 s): each model
    reaches training accuracy 1.000 and a loss far under 0.01 on its 4 fixed batches, of 16 images
    here. Measured on an AMD EPYC Zen 3: 0.0002 seed_cnn, 0.0007 bn_cnn, 0.0021 air_cnn, 0.0032
    resnet; the cosine decay to 0 makes the last epochs settle, so the value barely moves."""
    from fmnist.models import REGISTRY

    zoo = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    targets = {OmegaConf.load(CONF / "model" / f"{m}.yaml")._target_ for m in zoo}
    assert targets == set(REGISTRY)  # every model class has its YAML file, so all are tried
    small = ["debug=overfit", "batch_size=16"]  # 64 images: the ResNet's steps cost half
    cfgs = {m: compose_cfg([*small, f"model={m}"]) for m in zoo}  # once each (~0.5 s)
    for model in zoo:  # "no dropout": a model with dropout gets it switched off for the test
        assert cfgs[model].model.get("dropout", 0) == 0, model
    sweep = tmp_path / "sweep"
    args = ["-m", *small, f"model={','.join(zoo)}", "callbacks.progress.bar=false"]
    run_train([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    for model in zoo:
        cfg = cfgs[model]
        job = sweep / f"batch_size=16,debug=overfit,model={model}"
        rows = json.loads((job / "results.json").read_text())
        assert len(rows) == cfg.epochs and rows[0]["loss"] > 1.0, model  # it started from chance
        assert rows[-1]["accuracy"] == 1.0 and rows[-1]["num_correct"] == 4 * cfg.batch_size, model
        assert rows[-1]["loss"] < 0.01, (model, rows[-1]["loss"])


def test_debug_profile_writes_a_trace_and_a_table(data_root, tmp_path):
    run_dir = tmp_path / "profile"
    # in-process, as debug=anomaly below: the preset is a callback; the CLI adds nothing to it
    cfg = compose_cfg(
        ["debug=profile", "callbacks.progress.bar=false"], data_root, output_dir=run_dir
    )
    train(cfg)
    trace = json.loads((run_dir / "profile" / "trace.json").read_text())
    assert any("conv" in e.get("name", "") for e in trace["traceEvents"])
    log = (run_dir / "train.log").read_text()
    assert "profile of 20 training steps" in log and "Self CPU" in log


class AnomalyProbe(Callback):
    seen: list = []

    def on_batch_end(self, state, batch_idx):
        AnomalyProbe.seen.append(torch.is_anomaly_enabled())


def test_debug_anomaly_and_fast(data_root, tmp_path):
    from omegaconf import open_dict

    cfg = compose_cfg(
        ["debug=anomaly", "callbacks.progress.bar=false"], data_root, output_dir=tmp_path / "a"
    )
    with open_dict(cfg):
        cfg.callbacks["probe"] = {"_target_": "tests.test_tools.AnomalyProbe"}
    AnomalyProbe.seen.clear()
    train(cfg)
    assert AnomalyProbe.seen == [True] * 20
    cfg = compose_cfg(
        ["debug=fast", "callbacks.progress.bar=false"], data_root, output_dir=tmp_path / "f"
    )
    row = train(cfg)
    assert row["epoch"] == 1 and torch.is_anomaly_enabled() is False  # reset by the next run
    assert (tmp_path / "f" / "checkpoints" / "best.pt").exists()
