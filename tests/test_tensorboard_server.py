"""A real TensorBoard server on 127.0.0.1 shows what users should see for a 4-job sweep."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
JOBS = {f"batch_size={b},epochs=2,lr={lr}": (b, lr) for b in (100, 1000) for lr in (0.01, 0.001)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard(sweep4: Path):
    port = free_port()
    tb = Path(sys.executable).parent / "tensorboard"
    proc = subprocess.Popen(
        [
            str(tb),
            "--logdir",
            str(sweep4),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                tags = get(f"{base}/data/plugin/scalars/tags")
                if len(tags) >= 4 and all("Accuracy/test" in t for t in tags.values()):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "TensorBoard did not load the runs in 90 s"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_tensorboard_shows_one_run_per_job_with_everything(tensorboard):
    runs = get(f"{tensorboard}/data/runs")
    assert sorted(runs) == sorted(JOBS)  # exactly the 4 jobs: no timestamped hparams subdirs

    scalars = get(f"{tensorboard}/data/plugin/scalars/tags")
    histograms = get(f"{tensorboard}/data/plugin/histograms/tags")
    images = get(f"{tensorboard}/data/plugin/images/tags")
    graphs = get(f"{tensorboard}/data/plugin/graphs/info")
    for run in JOBS:
        assert {"Loss/train", "Accuracy/train", "Loss/test", "Accuracy/test"} <= set(scalars[run])
        assert {"conv1.weight", "conv1.weight.grad", "out.bias"} <= set(histograms[run])
        assert {"images", "ConfusionMatrix/test", "Misclassified/test"} <= set(images[run])
        assert graphs[run]["run_graph"] is True

    series = get(
        f"{tensorboard}/data/plugin/scalars/scalars?run={urllib.request.quote(next(iter(JOBS)))}&tag=Accuracy/test"
    )
    assert [point[1] for point in series] == [1, 2]  # one point per epoch

    groups = get(
        f"{tensorboard}/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]
    assert len(groups) == 4
    seen = set()
    for group in groups:
        hp = group["hparams"]
        seen.add((int(hp["batch_size"]), float(hp["lr"])))
        assert hp["model"] == "seed_cnn" and hp["optimizer"] == "adam"
        metrics = {m["name"]["tag"]: m["value"] for m in group["sessions"][0]["metricValues"]}
        assert 0 < metrics["Accuracy/test"] <= 1 and metrics["Loss/test"] > 0
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert seen == set(JOBS.values())
