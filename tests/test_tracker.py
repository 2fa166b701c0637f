"""The tracker in-process on real data, cut to a few batches."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from fmnist.callbacks.base import Callback, Tracker
from fmnist.callbacks.results import rows_to_csv
from fmnist.engine.runner import train
from fmnist.run.files import write_text


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_run_start(self, state):
        self.calls.append("run_start")

    def on_epoch_start(self, state):
        self.calls.append(f"epoch_start:{state.epoch}")

    def on_batch_end(self, state, batch_idx):
        self.calls.append(f"batch:{batch_idx}")

    def on_epoch_end(self, state, row):
        self.calls.append(f"epoch_end:{row['epoch']}")

    def on_run_end(self, state):
        self.calls.append("run_end")

    def on_exception(self, state, exc):
        self.calls.append(f"exception:{type(exc).__name__}")


RECORDER = Recorder()


def make_recorder():
    return RECORDER


@pytest.fixture
def in_tmp(tmp_path):
    return tmp_path  # cfg_quick's output_dir


def test_hooks_fire_in_order(cfg_quick, in_tmp):
    RECORDER.calls.clear()
    with open_dict(cfg_quick):
        cfg_quick.callbacks["recorder"] = {"_target_": "tests.test_tracker.make_recorder"}
    train(cfg_quick)
    expected = ["run_start"]
    for epoch in (1, 2):
        expected += [f"epoch_start:{epoch}", "batch:0", "batch:1", "batch:2", f"epoch_end:{epoch}"]
    assert RECORDER.calls == [*expected, "run_end"]


def test_exception_hook_and_failed_status(cfg_quick, in_tmp):
    RECORDER.calls.clear()
    with open_dict(cfg_quick):
        cfg_quick.callbacks["recorder"] = {"_target_": "tests.test_tracker.make_recorder"}
    cfg_quick.lr = 1e12  # diverges: NaN/inf loss within a few steps
    cfg_quick.limit_train_batches = 50
    with pytest.raises(RuntimeError, match="loss became"):
        train(cfg_quick)
    assert RECORDER.calls[-1] == "exception:NonFiniteLossError"
    status = json.loads((in_tmp / "status.json").read_text())
    assert status["status"] == "failed" and status["error"]["type"] == "NonFiniteLossError"


def test_results_rows(cfg_quick, in_tmp):
    row = train(cfg_quick)
    rows = list(csv.DictReader((in_tmp / "results.csv").open()))
    as_json = json.loads((in_tmp / "results.json").read_text())
    assert [r["epoch"] for r in rows] == ["1", "2"] and len(as_json) == 2
    for key in (
        "run",
        "epoch",
        "loss",
        "accuracy",
        "test_loss",
        "test_accuracy",
        "epoch_duration",
        "run_duration",
        "lr",
        "batch_size",
        "shuffle",
        "model",
        "optimizer",
        "seed",
    ):
        assert key in rows[0], key
    assert as_json[-1]["model"] == "seed_cnn"  # the chosen YAML file, as on the command line
    assert as_json[-1] == row
    # loss and accuracy are per sample over the batches actually seen (3 x 100 images)
    assert as_json[0]["num_correct"] == round(as_json[0]["accuracy"] * 300)
    assert as_json[0]["test_num_correct"] == round(as_json[0]["test_accuracy"] * 2000)
    assert float(rows[1]["run_duration"]) >= float(rows[0]["run_duration"])
    matrix = list(csv.reader((in_tmp / "confusion_matrix.csv").open()))
    assert matrix[0][1:] == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    assert sum(int(v) for r in matrix[1:] for v in r[1:]) == 2000


def test_last_partial_batch_counts_per_sample(cfg_quick, in_tmp):
    cfg_quick.batch_size = 7000  # 55,000 = 7 x 7,000 + 6,000
    cfg_quick.limit_train_batches = None
    cfg_quick.epochs = 1
    cfg_quick.callbacks = {}
    row = train(cfg_quick)
    assert row["num_correct"] == round(row["accuracy"] * 55000)


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    path = tmp_path / "results.csv"
    write_text(path, "old\n")

    class Boom(Exception):
        pass

    def exploding(handle):
        handle.write(b"half")
        raise Boom

    from fmnist.run import files

    with pytest.raises(Boom):
        files.atomic_write(Path(path), exploding)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["results.csv"]  # no temp file left behind


def test_rows_to_csv_keeps_new_columns():
    text = rows_to_csv([{"a": 1}, {"a": 2, "b": 3}])
    assert text.splitlines() == ["a,b", "1,", "2,3"]


def test_tracker_skips_noop_batch_hooks():
    class Quiet(Callback):
        pass

    tracker = Tracker({"quiet": Quiet(), "recorder": RECORDER})
    assert tracker._batch_callbacks == [RECORDER]


def test_same_seed_same_results(cfg_quick, tmp_path):
    rows = []
    for name in ("a", "b"):
        cfg_quick.output_dir = str(tmp_path / name)
        torch.manual_seed(123 if name == "a" else 456)  # global state must not matter
        train(cfg_quick)
        rows.append(json.loads((tmp_path / name / "results.json").read_text()))

    def strip(rs):
        return [{k: v for k, v in r.items() if "duration" not in k and k != "run"} for r in rs]  # noqa: E731

    assert strip(rows[0]) == strip(rows[1])


class OutputsProbe(Callback):
    """Records, each epoch, whether the evaluations kept probabilities and misclassified images."""

    seen: list = []

    def __init__(self, ask_at: int = 0):
        self.ask_at = ask_at

    def wants_outputs(self, state):
        return state.epoch == self.ask_at

    def on_epoch_end(self, state, row):
        test = state.evals["test"]
        OutputsProbe.seen.append(("probs" in test, len(test["wrong_images"]) > 0))


@pytest.mark.parametrize(
    ("ask_at", "expected"), [(0, [(False, False)] * 2), (2, [(False, False), (True, True)])]
)
def test_the_loop_keeps_outputs_only_for_a_callback_that_asks(cfg_quick, ask_at, expected):
    with open_dict(cfg_quick):
        cfg_quick.callbacks = {
            "probe": {"_target_": "tests.test_tracker.OutputsProbe", "ask_at": ask_at}
        }
    OutputsProbe.seen.clear()
    train(cfg_quick)
    assert OutputsProbe.seen == expected


def test_tensorboard_figures_keep_within_their_share_of_the_run_time():
    import time
    from types import SimpleNamespace

    from fmnist.callbacks.tensorboard import TensorBoardCallback

    cb = TensorBoardCallback(figure_budget=0.05)
    state = SimpleNamespace(epoch=1, cfg=SimpleNamespace(epochs=10), run_start=time.perf_counter())
    assert cb.wants_outputs(state)  # the first epoch draws: nothing measured yet
    cb._figure_s = cb._figure_cost = 0.2  # as on_epoch_end records a drawing
    state.epoch, state.run_start = 2, time.perf_counter() - 2.0  # 5 % of 2 s < 0.4 s
    assert not cb.wants_outputs(state)
    state.epoch, state.run_start = 3, time.perf_counter() - 10.0  # 5 % of 10 s >= 0.4 s
    assert cb.wants_outputs(state)
    state.epoch, state.run_start = 10, time.perf_counter()  # the last epoch always draws
    assert cb.wants_outputs(state)
    state.epoch = 4
    unlimited = TensorBoardCallback(figure_budget=0)
    unlimited._figure_s = unlimited._figure_cost = 100.0
    assert unlimited.wants_outputs(state)
    with pytest.raises(ValueError, match="figure_budget"):
        TensorBoardCallback(figure_budget=2)
