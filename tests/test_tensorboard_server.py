"""A real TensorBoard server on 127.0.0.1 shows what users should see for a 4-job sweep."""

import json
import shutil
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


def test_tensorboard_has_the_tutorials_views_for_every_run(tensorboard):
    """PyTorch's Fashion-MNIST TensorBoard tutorial: projector, PR curves, predictions figure,
    and a custom-scalars layout comparing the splits."""
    projector = get(f"{tensorboard}/data/plugin/projector/runs")
    assert sorted(projector) == sorted(JOBS)
    for run in JOBS:
        config = get(f"{tensorboard}/data/plugin/projector/info?run={urllib.request.quote(run)}")
        tensors = config["embeddings"]
        assert tensors and tensors[0]["tensorShape"][1] == 60  # seed_cnn's penultimate layer
        assert tensors[0]["metadataPath"] and tensors[0]["sprite"]["imagePath"]
    pr = get(f"{tensorboard}/data/plugin/pr_curves/tags")
    images = get(f"{tensorboard}/data/plugin/images/tags")
    from fmnist import CLASSES

    for run in JOBS:
        assert {f"PR/{name}" for name in CLASSES} <= set(pr[run])
        assert "Predictions/val" in images[run]
    layout = get(f"{tensorboard}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["Loss"] == ["Loss/train", "Loss/val", "Loss/test"]
    assert charts["Accuracy"] == ["Accuracy/train", "Accuracy/val", "Accuracy/test"]
    text = get(f"{tensorboard}/data/plugin/text/tags")
    assert all(any(tag.startswith("provenance") for tag in text[run]) for run in JOBS)


def test_a_browser_sees_both_dashboards(tensorboard, sweep4, tmp_path):
    """Headless Chromium (Debian's) shows every run in the time series, and every run's lr and
    validation accuracy in the HParams table, as a person would see them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install chromium (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    expected = []  # (lr, last validation accuracy) as TensorBoard prints them: 5 significant digits
    for run, (_, lr) in JOBS.items():
        last = json.loads((sweep4 / run / "results.json").read_text())[-1]
        expected.append((format(lr, "#.5g"), format(last["val_accuracy"], "#.5g")))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{tensorboard}/#timeseries", wait_until="networkidle")
        for run in JOBS:
            page.get_by_text(run, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "timeseries.png"))
        page.goto(f"{tensorboard}/#hparams", wait_until="networkidle")
        page.get_by_text("Trial ID").first.wait_for(timeout=60_000)
        swept = page.get_by_role("checkbox", name="lr", exact=True).first
        assert swept.is_checked()  # what the sweep varies is shown first, unasked
        for lr, val in expected:
            page.get_by_text(lr, exact=True).first.wait_for(timeout=30_000)
            assert page.get_by_text(val, exact=True).count() >= 1, val
        assert page.get_by_text("Accuracy/val", exact=True).count() >= 1
        rows = page.get_by_role("row").count()
        page.screenshot(path=str(tmp_path / "hparams.png"), full_page=True)
        browser.close()
    assert rows >= 1 + len(JOBS)  # a header and one row per run
    assert (tmp_path / "timeseries.png").stat().st_size > 10_000
