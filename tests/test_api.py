"""fmnist from Python and Jupyter (fmnist/api.py, notebooks/article.ipynb): the same engine as the
command line, repeatable in one process, and the article's notebook run by a real kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fmnist
from tests.conftest import DATA, ROOT

TINY = ["epochs=1", "limit_train_batches=3", "limit_test_batches=1", f"data.root={DATA}"]


@pytest.mark.slow
def test_two_calls_in_one_process_make_two_runs_with_their_own_values(tmp_path, data_root):
    first = fmnist.train([*TINY, "lr=0.005", f"hydra.run.dir={tmp_path / 'a'}"])
    cfg = fmnist.compose(
        [*TINY, "lr=0.02", "model=bn_cnn", "model.width=8", f"hydra.run.dir={tmp_path / 'b'}"]
    )
    assert cfg.lr == 0.02 and cfg.choices.model == "bn_cnn" and Path(cfg.output_dir).is_absolute()
    second = fmnist.train(cfg)
    assert first.dir != second.dir and first.status == second.status == "completed"
    assert list(first.results["lr"]) == [0.005] and list(second.results["lr"]) == [0.02]
    assert second.results["model"].tolist() == ["bn_cnn"] and "model" not in first.config.model
    assert second.config.model.width == 8 and first.best.is_file()
    assert list(first.results.columns) == (first.dir / "results.csv").read_text().split("\n")[
        0
    ].split(",")
    loaded = fmnist.load(second.dir)
    table = loaded.predict(fmnist_images(3))
    assert len(table) == 3 and table["predicted"].isin(fmnist.CLASSES).all()
    assert abs(table[list(fmnist.CLASSES)].sum(axis=1) - 1).max() < 1e-5
    assert (second.dir / ".hydra" / "overrides.yaml").is_file()  # as the command line writes
    compared = fmnist.compare(tmp_path)
    assert sorted(compared["run"]) == ["a", "b"] and set(compared["status"]) == {"completed"}


def fmnist_images(n: int):  # noqa: ANN201
    from fmnist.data.tensors import load_tensors

    return load_tensors(DATA)["test_images"][:n]


def test_configs_composed_within_one_second_get_directories_of_their_own():
    dirs = {fmnist.compose([f"lr={lr}"]).output_dir for lr in (0.1, 0.2, 0.3)}
    assert len(dirs) == 3 and all("/outputs/runs/" in d for d in dirs)


def test_errors_are_the_command_lines_one_line_errors(tmp_path):
    with pytest.raises(fmnist.FmnistError, match=r"^lr=0.0 is invalid: must be a number > 0"):
        fmnist.train(["lr=0", f"hydra.run.dir={tmp_path / 'bad'}"])
    with pytest.raises(fmnist.FmnistError, match="lrr") as caught:
        fmnist.compose(["lrr=1"])
    assert "\n" not in str(caught.value)
    with pytest.raises(fmnist.FmnistError, match="not a run directory"):
        fmnist.load(tmp_path)


@pytest.mark.slow
def test_a_sweep_from_python_with_joblib(tmp_path, data_root):
    grid = fmnist.sweep(
        ["lr=0.01,0.001", *TINY, f"hydra.sweep.dir={tmp_path / 'grid'}"],
        launcher="joblib",
        quiet=True,
    )
    assert grid.returncode == 0 and grid.dir == (tmp_path / "grid").absolute()
    assert sorted(grid.table["lr"]) == [0.001, 0.01] and set(grid.table["status"]) == {"completed"}
    assert len(list(grid.dir.glob("*/status.json"))) == 2
    assert grid.across_seeds is None  # seed does not vary
    with pytest.raises(fmnist.FmnistError, match="cannot sweep device"):
        fmnist.sweep(["device=cpu,auto", *TINY, f"hydra.sweep.dir={tmp_path / 'x'}"], quiet=True)


INTERRUPTED = """
import json, sys
import fmnist
args = sys.argv[1:]
try:
    fmnist.train(args)
except KeyboardInterrupt:
    print("interrupted", flush=True)
run = fmnist.train(args)  # the same call, in the same process: resumes
print(json.dumps({"status": run.status, "epochs": run.results["epoch"].tolist()}), flush=True)
"""


@pytest.mark.slow
def test_interrupting_a_run_from_python_leaves_it_resumable_in_the_same_process(
    tmp_path, data_root
):
    run_dir = tmp_path / "run"
    args = [f"data.root={DATA}", "epochs=3", "limit_train_batches=150", "limit_test_batches=1"]
    args += ["callbacks.progress.bar=false", f"hydra.run.dir={run_dir}"]
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = (run_dir / "status.json").is_file() and json.loads(
            (run_dir / "status.json").read_text() or "{}"
        )
        if status and status.get("last_epoch", 0) >= 1:
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)  # as Jupyter's stop button does
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    lines = out.strip().splitlines()
    assert "interrupted" in lines, out
    final = json.loads(lines[-1])
    assert final == {"status": "completed", "epochs": [1, 2, 3]}, err
    log = (run_dir / "train.log").read_text()
    assert "resuming" in log


def test_the_notebook_is_committed_without_outputs():
    notebook = json.loads((ROOT / "notebooks" / "article.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 8
    assert not [c for c in code if c.get("outputs") or c.get("execution_count")]
    assert "parameters" in code[0]["metadata"].get("tags", [])


@pytest.mark.slow
def test_the_articles_notebook_runs_top_to_bottom_in_a_real_kernel(tmp_path, data_root):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from tensorboard import manager

    notebook = nbformat.read(ROOT / "notebooks" / "article.ipynb", as_version=4)
    sweep_dir = tmp_path / "article"
    notebook.cells[1].source = (
        "EPOCHS = 1\nLIMIT_TRAIN_BATCHES = 5\nLIMIT_TEST_BATCHES = 1\n"
        f"SWEEP_DIR = {str(sweep_dir)!r}"
    )
    before = {info.pid for info in manager.get_all()}
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {
        "FMNIST_DATA": str(DATA),
        "PYTHONPATH": str(ROOT),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client.execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        for info in manager.get_all():  # the notebook's TensorBoard: stopped with the test
            if info.pid not in before:
                os.kill(info.pid, signal.SIGTERM)
    outputs = [c.get("outputs", []) for c in notebook.cells if c.cell_type == "code"]

    def texts(cell: list) -> str:
        return "".join(
            o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell
        )

    def images(cell: list) -> int:
        return sum("image/png" in o.get("data", {}) for o in cell)

    assert images(outputs[2]) == 1  # the grid of sample images
    assert "32,998 parameters" in texts(outputs[3])
    assert len(list(sweep_dir.glob("*/status.json"))) == 8  # the article's 2 x 2 x 2 grid
    table = outputs[5][0]["data"]["text/html"]
    assert table.count("<tr") == 9  # a header and 8 runs
    for column in ("lr", "batch_size", "shuffle", "test_accuracy"):
        assert f"<th>{column}</th>" in table
    assert images(outputs[6]) == 1 and images(outputs[7]) == 1  # curves, confusion matrix
    assert "predicted" in str(outputs[7][-1].get("data", {}).get("text/plain", ""))
    assert "tensorboard" in json.dumps(outputs[8]).lower()
