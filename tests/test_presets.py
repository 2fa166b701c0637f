"""Experiment presets, augmentation, schedules: compose, run a few real batches, keep invariants."""

import pytest
import torch
from omegaconf import open_dict

from fmnist.data.augment import Augment
from fmnist.data.loaders import MemoryLoader
from fmnist.data.tensors import load_tensors
from fmnist.engine.runner import train
from tests.conftest import CONF, compose_cfg


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_preset_runs_a_few_batches(preset, data_root, tmp_path):
    cfg = compose_cfg(
        [f"experiment={preset}", "epochs=1", "limit_train_batches=2", "limit_test_batches=1"]
        + ["data.eval_batch_size=256"],  # a batch of each split: its check, not its size
        data_root,
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.progress.bar = False
        if cfg.data.val_size:  # the preset's validation, on fewer images: its check, not its size
            cfg.data.val_size = 512
    row = train(cfg)
    assert row["epoch"] == 1 and 0 <= row["test_accuracy"] <= 1
    if cfg.data.val_size:
        assert (
            "val_accuracy" in row
            and torch.load(tmp_path / "checkpoints" / "best.pt")["best"]["metric"] == "val_accuracy"
        )


def test_presets_say_what_they_claim():
    article = compose_cfg(["experiment=article"])
    assert (article.lr, article.batch_size, article.shuffle, article.epochs) == (
        0.01,
        100,
        False,
        5,
    )
    assert article.model._target_.endswith("SeedCNN") and article.data.loader.value == "torchvision"
    assert article.data.val_size == 0  # the article's setup: all 60,000 images, no selection
    best = compose_cfg(["experiment=best_bn_cnn"])  # the bn_cnn presets, kept for comparison
    assert best.data.val_size == 5000 and best.data.augment.crop_padding == 2
    assert (
        best.data.augment.hflip and best.data.augment.erasing == 0.1 and best.runtime.bf16 == "auto"
    )
    assert (best.lr, best.batch_size, best.epochs, best.label_smoothing) == (0.1, 128, 40, 0.05)
    assert best.choices.model == "bn_cnn" and best.model.width == 32 and best.model.dropout == 0.1
    assert best.choices.optimizer == "sgd" and best.choices.scheduler == "onecycle"
    assert best.optimizer.nesterov and best.optimizer.momentum > 0  # "SGD with Nesterov momentum"
    assert best.scheduler.max_lr == best.lr  # "one-cycle peak"
    fast = compose_cfg(["experiment=fast_bn_cnn"])
    assert fast.model.width == 16 and fast.epochs == 12 and fast.choices.optimizer == "adamw"
    assert (fast.lr, fast.batch_size, fast.label_smoothing, fast.tta) == (0.004, 128, 0.0, True)
    assert fast.choices.scheduler == "onecycle" and fast.model.dropout == 0.25
    assert fast.scheduler.max_lr == fast.lr  # "one-cycle peak"
    assert fast.data.augment.hflip and not (
        fast.data.augment.crop_padding or fast.data.augment.erasing
    )


def test_time_to_accuracy_presets_say_what_they_claim():
    """experiment=fast and experiment=best: air_cnn with airbench's recipe; each comment in the
    YAML files is checked here."""
    for name in ("fast", "best", "best_gpu"):
        cfg = compose_cfg([f"experiment={name}"])
        assert cfg.choices.model == "air_cnn" and cfg.model.whiten_kernel == 2 and cfg.model.dirac
        assert cfg.choices.optimizer == "sgd" and cfg.optimizer.nesterov  # "Nesterov SGD"
        assert cfg.optimizer.momentum == 0.85 and cfg.choices.scheduler == "triangle"
        assert cfg.scheduler.end == 0.0 and cfg.scheduler.start == 0.2  # "linear decay to 0"
        assert cfg.param_groups.norm.lr_scale == 64  # "BatchNorm biases learn 64x faster"
        decay = cfg.optimizer.weight_decay  # "the same decay per step": lr x decay is kept
        norm_decay = cfg.param_groups.norm.weight_decay
        assert norm_decay * 64 == pytest.approx(decay, rel=0.05)
        assert cfg.label_smoothing == 0.2 and cfg.batch_size == (1024 if "gpu" in name else 256)
        assert cfg.data.augment.hflip and cfg.data.augment.alternate_flip
        assert cfg.tta and cfg.data.val_size == 5000 and cfg.model.bn_momentum == 0.4
    fast, best = compose_cfg(["experiment=fast"]), compose_cfg(["experiment=best"])
    assert (fast.model.width1, fast.model.width2, fast.model.width3) == (24, 48, 96)
    assert fast.epochs == 14 and fast.eval_every == fast.epochs  # "evaluated once"
    # "airbench's decays are per step of a 10-epoch run"; best's "measured at 36 epochs"
    assert fast.weight_decay_epochs == 10 and fast.optimizer.weight_decay == 1.33e-3
    assert best.weight_decay_epochs == 36 and best.optimizer.weight_decay == 5e-4
    assert fast.tta_translate == 0 and fast.data.augment.crop_padding == 0
    assert fast.runtime.bf16 == "auto"  # "only where the CPU has it natively"
    assert (best.model.width1, best.model.width2, best.model.width3) == (32, 64, 128)
    assert best.budget_min == 30 and best.eval_every == 6  # "30 minutes of training"
    assert best.epochs == 36  # "with budget_min=null"
    for debug in ("fast", "profile", "anomaly", "overfit"):  # their epochs, not best's budget
        assert compose_cfg(["experiment=best", f"debug={debug}"]).budget_min is None
    assert best.tta_translate == 1 and best.data.augment.crop_padding == 2
    assert best.runtime.bf16 == "auto"
    (wide,) = best.budget_models  # "48/96/192 where 40+ epochs of it fit", else 32/64/128
    assert wide.min_epochs == 40 and wide.model == {"width1": 48, "width2": 96, "width3": 192}
    gpu = compose_cfg(["experiment=best_gpu"])  # best, with airbench94's widths and batch
    assert (gpu.model.width1, gpu.model.width2, gpu.model.width3) == (64, 256, 256)
    assert (gpu.lr, gpu.batch_size, gpu.epochs, gpu.eval_every) == (1.5, 1024, 40, 5)
    assert gpu.budget_min is None  # "40 epochs as airbench sizes them"
    assert gpu.budget_models is None  # "its own widths, not best's"
    assert gpu.tta_translate == 1 and gpu.data.augment.crop_padding == 2
    assert gpu.choices.scheduler == "triangle" and gpu.runtime.bf16 == "auto"


def test_augmentation_keeps_shapes_range_and_labels(data_root):
    tensors = load_tensors(data_root)
    images, labels = tensors["test_images"][:512], tensors["test_labels"][:512]
    plain = MemoryLoader(images, labels, 128, shuffle=True, seed=1)
    augmented = MemoryLoader(
        images,
        labels,
        128,
        shuffle=True,
        seed=1,
        augment=Augment(crop_padding=2, hflip=True, erasing=0.5),
    )
    changed = 0
    for (x0, y0), (x1, y1) in zip(plain.epoch(3), augmented.epoch(3), strict=True):
        assert x1.shape == x0.shape and x1.dtype == torch.float32
        assert x1.min() >= 0 and x1.max() <= 1
        assert torch.equal(y0, y1)  # same images in the same order: labels untouched
        changed += int((x0 != x1).flatten(1).any(1).sum())
    assert changed > 400  # nearly every image is altered


def test_each_augmentation_does_its_job():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x = torch.rand(64, 1, 28, 28)
    erased = Augment(erasing=1.0)(x, gen())
    assert ((erased == 0) & (x != 0)).flatten(1).any(1).all()  # every image got a hole
    flipped = Augment(hflip=True)(x, gen())
    same, mirrored = (flipped == x).flatten(1).all(1), (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    ones = torch.ones(64, 1, 28, 28)
    cropped = Augment(crop_padding=2)(ones, gen())
    assert (cropped.sum((1, 2, 3)) < 28 * 28).any()  # shifted content brings in zero padding
    assert (cropped.sum((1, 2, 3)) >= 26 * 26).all()


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_schedules_step_per_batch_and_are_logged(name, data_root, tmp_path):
    cfg = compose_cfg(
        [
            f"scheduler={name}",
            "epochs=2",
            "limit_train_batches=5",
            "limit_test_batches=1",
            "callbacks.progress.bar=false",
        ],
        data_root,
        output_dir=tmp_path,
    )
    train(cfg)
    import json

    rows = json.loads((tmp_path / "results.json").read_text())
    lrs = [r["lr_current"] for r in rows]
    assert lrs[0] != lrs[1] and all(lr < 0.01 for lr in lrs)
    assert rows[0]["scheduler"] == name
