"""Experiment trackers as ordinary callbacks: MLflow against a real `mlflow server` on 127.0.0.1
(a temporary SQLite store), and W&B offline, read back from its own run files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_train
from tests.test_resume import start, wait_for_epoch

TINY = ["epochs=2", "limit_train_batches=3", "limit_test_batches=1", "callbacks.progress.bar=false"]
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy", "lr_current")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results(run_dir: Path) -> list[dict[str, float | str]]:
    with (run_dir / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 with a temporary SQLite store."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.skip("no mlflow server: pip install mlflow (make install's dev extra has it)")
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"],
        cwd=home,
        stdout=(home / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn workers: stopped as one group
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                break
        except OSError:
            time.sleep(0.5)
        assert server.poll() is None, (home / "server.log").read_text()[-2000:]
    else:
        pytest.fail("mlflow server did not answer in 120 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def client(url: str):  # noqa: ANN201
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


@pytest.fixture(scope="module")
def readme_sweep(mlflow_server, tmp_path_factory, data_root) -> Path:
    """The README sweep, logged to the server (once for the tests that look at it)."""
    cwd = tmp_path_factory.mktemp("readme")
    sweep = cwd / "grid"
    run_train(
        ["-m", "lr=0.01,0.001", "batch_size=100,1000", "callbacks=[default,mlflow]", *TINY]
        + [f"callbacks.mlflow.tracking_uri={mlflow_server}", f"hydra.sweep.dir={sweep}"],
        cwd=cwd,
    )
    return sweep


@pytest.mark.slow
def test_the_readme_sweep_is_four_children_of_one_parent_with_results_csvs_values(
    mlflow_server, readme_sweep
):
    sweep = readme_sweep
    mlflow = client(mlflow_server)
    experiment = mlflow.get_experiment_by_name("grid")  # the sweep's folder name
    runs = mlflow.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"  # ended with the sweep
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for run in children:
        run_dir = Path(run.data.tags["run_dir"])
        assert run_dir.parent == sweep and run.info.run_name == run_dir.name
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        assert run.data.tags["sweep"] == str(sweep) and run.data.tags["host"]
        rows = results(run_dir)
        assert float(run.data.params["lr"]) == float(rows[0]["lr"])
        assert int(run.data.params["batch_size"]) == int(rows[0]["batch_size"])
        for metric in METRICS:
            history = mlflow.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [1, 2], metric
            assert [m.value for m in history] == pytest.approx(
                [float(r[metric]) for r in rows], rel=1e-6
            ), metric
        artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
        assert {"results.csv", "provenance.json", "confusion_matrix.csv"} <= artifacts


@pytest.mark.slow
def test_a_sweep_with_a_failed_job_ends_its_parent_run_failed(mlflow_server, tmp_path, data_root):
    # a failed job: Hydra skips on_multirun_end, so the parent run is ended at the process's exit
    done = run_train(
        ["-m", "lr=0.01,1e30", "optimizer=sgd", "callbacks=[default,mlflow]", *TINY]
        + [f"callbacks.mlflow.tracking_uri={mlflow_server}"]
        + [f"hydra.sweep.dir={tmp_path / 'broken'}"],
        cwd=tmp_path,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "NonFiniteLossError" in out and "not ended" not in out, out
    mlflow = client(mlflow_server)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("broken").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert sorted(r.info.status for r in runs if r is not parent) == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_kill9_then_the_same_command_is_one_mlflow_run_with_each_epoch_once(
    mlflow_server, tmp_path, data_root
):
    run_dir = tmp_path / "kill9" / "run"
    args = ["epochs=3", "limit_train_batches=100", "limit_test_batches=1"]
    args += ["callbacks.progress.bar=false", "callbacks.tensorboard=null"]
    args += ["callbacks=[default,mlflow]", f"callbacks.mlflow.tracking_uri={mlflow_server}"]
    args += [f"hydra.run.dir={run_dir}"]
    proc = start(args, cwd=tmp_path)
    wait_for_epoch(run_dir, 1, proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    done = run_train(args, cwd=tmp_path)
    assert "resuming" in done.stdout + done.stderr
    mlflow = client(mlflow_server)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("kill9").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == runs[0].info.run_id
    rows = results(run_dir)
    history = mlflow.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]  # each epoch once, none missing
    assert [m.value for m in history] == pytest.approx([float(r["loss"]) for r in rows])


@pytest.mark.slow
def test_a_tracking_server_that_is_down_costs_one_warning_and_no_traceback(tmp_path, data_root):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    done = run_train(
        [*TINY, "callbacks=[default,mlflow]", f"hydra.run.dir={run_dir}"]
        + [f"callbacks.mlflow.tracking_uri=http://127.0.0.1:{free_port()}"],
        cwd=tmp_path,
    )
    out = done.stdout + done.stderr
    warnings = [line for line in out.splitlines() if "mlflow:" in line]
    assert len(warnings) == 1 and "training goes on" in warnings[0], out
    assert "Traceback" not in out
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert len(results(run_dir)) == 2


@pytest.mark.slow
def test_the_default_store_is_a_sqlite_file_under_outputs(tmp_path, data_root):
    pytest.importorskip("mlflow")
    run_train(
        [*TINY, "callbacks=[default,mlflow]", "hydra.run.dir=outputs/runs/day/one"], cwd=tmp_path
    )
    store = tmp_path / "outputs" / "mlflow.db"
    assert store.is_file()
    mlflow = client(f"sqlite:///{store}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("day").experiment_id])
    assert run.info.run_name == "one" and run.info.status == "FINISHED"
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]


@pytest.mark.slow
def test_the_mlflow_ui_in_a_browser_shows_the_sweeps_runs(mlflow_server, readme_sweep, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install chromium (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    experiment = client(mlflow_server).get_experiment_by_name("grid").experiment_id
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs", wait_until="load")
        parent = page.get_by_role("row").filter(has_text="grid").first
        parent.wait_for(timeout=90_000)  # the sweep's parent run, its jobs folded under it
        parent.get_by_role("button").first.click()  # unfold, as a person does
        for name in (job.parent.name for job in readme_sweep.glob("*/status.json")):
            page.get_by_text(name).first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow.png"), full_page=True)
        browser.close()
    assert (tmp_path / "mlflow.png").stat().st_size > 10_000


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log blocks of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last of several
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


@pytest.mark.slow
def test_wandb_offline_one_run_per_job_grouped_by_the_sweep_with_results_csvs_values(
    tmp_path, data_root
):
    pytest.importorskip("wandb")
    sweep = tmp_path / "wb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no key, no mode
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "train.py"), "-m", "seed=0,1"]
        + ["callbacks=[default,wandb]", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={**env, "FMNIST_DATA": os.environ.get("FMNIST_DATA", str(data_root))},
        stdin=subprocess.DEVNULL,  # nothing may prompt
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = set()
    for job in ("epochs=2,seed=0", "epochs=2,seed=1"):
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
        assert run.run_group == "wb" and run.display_name == job
        ids.add(run.run_id)
        history = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {
                    i.key or ".".join(i.nested_key): json.loads(i.value_json)
                    for i in r.history.item
                }
                history[items["_step"]] = items
        rows = results(sweep / job)
        assert sorted(history) == [1, 2]
        for row in rows:
            for metric in METRICS:
                assert history[int(row["epoch"])][metric] == pytest.approx(float(row[metric]))
    assert len(ids) == 2  # one W&B run per job, never merged
