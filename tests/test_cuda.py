"""On a CUDA GPU: data and model live on the GPU and an epoch never waits for it.

Skipped where there is no CUDA GPU (CI has none): run `pytest tests/test_cuda.py` on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fmnist.callbacks.base import Callback, Tracker
from fmnist.data.augment import Augment
from fmnist.data.loaders import MemoryLoader
from fmnist.data.tensors import load_tensors
from fmnist.engine.build import build_run
from fmnist.engine.fit import fit_one
from fmnist.engine.step import NonFiniteLossError
from fmnist.hparams import flat_hparams
from tests.conftest import compose_cfg, run_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BEST_CUT = [  # experiment=best's model, optimizer, schedule, bf16 and augmentation, a few batches
    "experiment=best",
    "data.val_size=0",
]
BN_SGD_GRAPHED = ["model=bn_cnn", "optimizer=sgd", "runtime.cuda_graphs=true"]  # BN + dropout


class SyncGuard(Callback):
    """Turns any host-GPU synchronisation inside the batch loop into an error (sync debug mode).

    From the second epoch on: the first one captures the CUDA graph, once, which may sync.
    """

    def __init__(self, batches: int):
        self.batches = batches

    def on_epoch_start(self, state) -> None:  # noqa: ANN001
        if state.epoch >= 2:
            torch.cuda.set_sync_debug_mode("error")

    def on_batch_end(self, state, batch_idx: int) -> None:  # noqa: ANN001
        if batch_idx + 1 == self.batches:
            torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, state, exc: BaseException) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")


def guarded_fit(overrides: list[str], data_root, tmp_path, batches: int = 30) -> dict:
    cfg = compose_cfg(
        [
            *overrides,
            "epochs=2",
            f"limit_train_batches={batches}",
            "limit_test_batches=2",
            "callbacks.progress.bar=true",  # the bar shows the device's loss sums: keep it
            "callbacks.progress.refresh_batches=1",
        ],
        data_root,
    )
    state = build_run(cfg, tmp_path, flat_hparams(cfg))
    state.tracker = Tracker({**state.tracker.named, "sync_guard": SyncGuard(batches)})
    return fit_one(state)


def test_auto_device_puts_data_and_model_on_the_gpu(data_root, tmp_path):
    cfg = compose_cfg(["device=auto"], data_root)
    state = build_run(cfg, tmp_path, flat_hparams(cfg))
    assert state.device.type == "cuda"
    assert state.data.train.images.is_cuda and state.data.test.images.is_cuda
    assert all(p.is_cuda for p in state.model.parameters())


def test_gpu_batches_equal_cpu_batches_augmentation_included(data_root):
    tensors = load_tensors(data_root)
    images, labels = tensors["train_images"][:1000], tensors["train_labels"][:1000]
    augment = Augment(crop_padding=2, hflip=True, erasing=0.5)
    loaders = [
        MemoryLoader(images, labels, 128, True, 7, augment, device=d, channels_last=True)
        for d in ("cpu", "cuda")
    ]
    pairs = list(zip(loaders[0].epoch(3), loaders[1].epoch(3), strict=True))
    assert len(pairs) == 8 and len(pairs[-1][0][1]) == 1000 - 7 * 128
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in pairs:
        assert x_gpu.is_cuda
        assert torch.equal(y_cpu, y_gpu.cpu())
        torch.testing.assert_close(x_gpu.cpu(), x_cpu)  # same order, crops, flips and erasing


@pytest.mark.parametrize(
    "overrides",
    [[], ["runtime.cuda_graphs=false"], BEST_CUT, BN_SGD_GRAPHED],
    ids=["default", "eager", "best", "bn-sgd-graphed"],
)
def test_an_epoch_never_waits_for_the_gpu(overrides, data_root, tmp_path):
    row = guarded_fit([*overrides, "runtime.nan_check_interval=1000"], data_root, tmp_path)
    assert row["epoch"] == 2 and row["loss"] < 2.2 and row["accuracy"] > 0.2  # chance: 2.30, 0.1


def test_cuda_graphs_are_on_where_safe(data_root, tmp_path):
    for overrides, expected in (([], True), (["scheduler=onecycle"], False), (BEST_CUT, False)):
        cfg = compose_cfg(overrides, data_root)
        state = build_run(cfg, tmp_path, flat_hparams(cfg))
        assert state.graphs is expected, overrides


def train_twice(overrides: list[str], data_root, tmp_path) -> dict[bool, tuple]:
    """The same seeded run eagerly and through a CUDA graph: (last row, initial, final weights)."""
    out = {}
    for graphs in (False, True):
        cfg = compose_cfg(
            [f"runtime.cuda_graphs={graphs}", "shuffle=false", "callbacks=none", *overrides],
            data_root,
        )
        run_dir = tmp_path / str(graphs)
        run_dir.mkdir()
        state = build_run(cfg, run_dir, flat_hparams(cfg))
        assert state.graphs is graphs
        initial = [p.detach().clone() for p in state.model.parameters()]
        row = fit_one(state)
        out[graphs] = row, initial, [p.detach().clone() for p in state.model.parameters()]
    return out


def test_graph_capture_trains_no_extra_steps(data_root, tmp_path):
    """One batch, one step: the capture's warm-up steps must leave no trace.

    Adam's first step moves each weight by about lr; leaked warm-up steps would move it ~4x."""
    out = train_twice(
        ["epochs=1", "limit_train_batches=1", "limit_test_batches=1"], data_root, tmp_path
    )
    (eager, w0, w_eager), (graphed, w0_graphed, w_graphed) = out[False], out[True]
    for a, b, c, d in zip(w0, w_eager, w0_graphed, w_graphed, strict=True):
        assert torch.equal(a, c)  # same seeded initial weights
        moved_eager, moved_graphed = (b - a).flatten(), (d - c).flatten()
        ratio = moved_graphed.norm() / moved_eager.norm()
        cosine = torch.nn.functional.cosine_similarity(moved_eager, moved_graphed, dim=0)
        assert 0.95 < ratio < 1.05 and cosine > 0.99, (ratio, cosine)
    assert graphed["num_correct"] == eager["num_correct"]  # the same forward pass on one batch
    assert abs(graphed["loss"] - eager["loss"]) < 1e-4


def test_graphed_steps_train_like_eager_steps(data_root, tmp_path):
    """2 x 50 replayed steps reach what 2 x 50 eager steps reach (not bitwise: cuDNN's
    backward kernels are not deterministic, and Adam turns tiny gradient noise into ~lr steps)."""
    out = train_twice(
        ["epochs=2", "limit_train_batches=50", "limit_test_batches=2"], data_root, tmp_path
    )
    (eager, _, _), (graphed, _, _) = out[False], out[True]
    assert abs(graphed["loss"] - eager["loss"]) < 0.02, (graphed["loss"], eager["loss"])
    assert abs(graphed["num_correct"] - eager["num_correct"]) <= 50  # of 5,000 images
    assert abs(graphed["test_accuracy"] - eager["test_accuracy"]) <= 0.02


def test_sync_guard_catches_a_per_batch_sync(data_root, tmp_path):
    """The control for the no-wait test: a NaN check every batch reads the loss, which syncs."""
    with pytest.raises(RuntimeError, match="synchroniz"):
        guarded_fit(["runtime.nan_check_interval=1"], data_root, tmp_path)


def test_nan_is_still_caught_on_the_gpu(data_root, tmp_path):
    cfg = compose_cfg(
        ["lr=1e12", "limit_train_batches=200", "limit_test_batches=1", "callbacks=none"],
        data_root,
    )
    state = build_run(cfg, tmp_path, flat_hparams(cfg))
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        fit_one(state)


def test_gpu_run_end_to_end_and_its_checkpoint_on_the_cpu(tmp_path, data_root):
    run_dir = tmp_path / "run"
    done = run_train(["epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "cuda" in (run_dir / "train.log").read_text()
    recorded = json.loads((run_dir / "results.json").read_text())[-1]["test_accuracy"]
    assert recorded > 0.80, done.stdout
    evaluated = subprocess.run(
        [sys.executable, "-m", "fmnist.commands.evaluate", str(run_dir), "--checkpoint", "last"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert abs(report["accuracy"] - recorded) <= 0.002, evaluated.stdout  # CPU vs GPU rounding


def test_a_fused_group_replays_as_one_cuda_graph_and_trains_like_eager(data_root, tmp_path):
    """Where a standalone run would replay its step as a CUDA graph, a fused group replays its
    fused step as one; its members train as the same group trained eagerly."""
    from fmnist.engine.fit import fit
    from fmnist.engine.fused_step import FusedStep
    from fmnist.engine.graphs import GraphedStep
    from fmnist.engine.signals import StopOnSignal

    out = {}
    for graphs in (False, True):
        runs = []
        for seed in (0, 1):
            overrides = [f"seed={seed}", "epochs=2", "limit_train_batches=50"]
            cfg = compose_cfg(
                [*overrides, "limit_test_batches=2", "callbacks=none", "shuffle=false"]
                + [f"runtime.cuda_graphs={graphs}"],
                data_root,
            )
            run_dir = tmp_path / f"{graphs}-{seed}"
            run_dir.mkdir()
            runs.append(build_run(cfg, run_dir, flat_hparams(cfg)))
        step = FusedStep(runs)
        assert isinstance(step.fn, GraphedStep) is graphs
        with StopOnSignal() as stop:
            fit(runs, stop, step)
        assert all(r.error is None for r in runs)
        out[graphs] = [r.history[-1] for r in runs]
    for eager, graphed in zip(out[False], out[True], strict=True):
        assert abs(graphed["loss"] - eager["loss"]) < 0.02, (graphed, eager)
        assert abs(graphed["test_accuracy"] - eager["test_accuracy"]) <= 0.02
