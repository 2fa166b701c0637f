"""scripts/gpu_check.py, the prepared GPU check, where no GPU is: its parts that must hold on any
machine (a step cut at its time limit leaves no process behind; the pool's figure reads its jobs'
files) and its answer without CUDA."""

import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

SPAWNS = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "print('child', child.pid, flush=True); time.sleep(120)"
)


def test_a_step_past_its_limit_is_killed_with_every_process_it_started(tmp_path):
    log = tmp_path / "check.log"
    status, seconds, tail = gpu_check.run([sys.executable, "-c", SPAWNS], 3.0, tmp_path, log)
    assert status == "timeout" and seconds < 60, (status, seconds)
    assert tail.startswith("child ")
    child = int(tail.split()[1])
    with contextlib.suppress(psutil.NoSuchProcess):  # gone already: killed and reaped
        proc = psutil.Process(child)
        _, alive = psutil.wait_procs([proc], timeout=10)  # a kill takes a moment to land
        assert not alive or proc.status() == psutil.STATUS_ZOMBIE, "the child outlived its limit"
    status, _, tail = gpu_check.run([sys.executable, "-c", "print('done')"], 30, tmp_path, log)
    assert (status, tail) == ("ok", "done")
    assert "$ " in log.read_text() and log.read_text().count("\n$ ") == 2  # both steps' output


def job(sweep: Path, name: str, device: str, started: str, ended: str) -> None:
    run = sweep / name
    run.mkdir(parents=True)
    hardware = {"device": device, "cuda_visible_devices": device[-1:]}
    (run / "provenance.json").write_text(json.dumps({"hardware": hardware, "slot": {"index": 0}}))
    status = {"status": "completed", "started": started, "ended": ended}
    (run / "status.json").write_text(json.dumps(status))


def test_the_pool_figure_says_where_each_job_ran_and_whether_jobs_overlapped(tmp_path):
    job(tmp_path / "a", "seed=0", "cuda:0", "2026-12-03T10:00:00", "2026-12-03T10:00:30")
    job(tmp_path / "a", "seed=1", "cuda:0", "2026-12-03T10:00:10", "2026-12-03T10:00:40")
    figure = gpu_check.pool_figure(tmp_path / "a")
    assert len(figure["jobs"]) == 2 and figure["all_on_cuda"] and figure["jobs_overlapped"]
    job(tmp_path / "b", "seed=0", "cuda:0", "2026-12-03T10:00:00", "2026-12-03T10:00:30")
    job(tmp_path / "b", "seed=1", "cpu", "2026-12-03T10:00:30", "2026-12-03T10:00:40")
    figure = gpu_check.pool_figure(tmp_path / "b")
    assert not figure["all_on_cuda"] and not figure["jobs_overlapped"]
    assert gpu_check.pool_figure(tmp_path / "none")["all_on_cuda"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it runs the whole check")
def test_without_cuda_the_check_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "gpu-check: no CUDA GPU here; nothing to check"
    ]
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_python_without_the_projects_packages_is_told_in_one_line(tmp_path):
    # -S: no site-packages at all, as a bare Python on a new GPU machine
    script = ROOT / "scripts" / "gpu_check.py"
    cmd = [sys.executable, "-S", str(script), "--out-dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu-check: this Python lacks torch, ") and "gpu-bundle" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_bundle_installs_offline_only_the_wheels_this_python_lacks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "fmnist_bundle_probe").mkdir(parents=True)
    (src / "fmnist_bundle_probe" / "__init__.py").write_text("ANSWER = 42\n")
    (src / "pyproject.toml").write_text(
        '[project]\nname = "fmnist-bundle-probe"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    bundle = tmp_path / "bundle"
    wheels = bundle / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index"]
    cmd += ["--no-build-isolation", "-w", str(wheels), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    (wheels / "hydra_core-0.0-py3-none-any.whl").write_bytes(b"not a wheel")  # installed: skipped
    (bundle / "data").mkdir()
    monkeypatch.setattr(gpu_check, "PATHS", [])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("FMNIST_DEBIAN_DIR", "unset")
    site = tmp_path / "site"
    assert gpu_check.use_bundle(bundle, site) == ["fmnist_bundle_probe"]
    site_paths = gpu_check.PATHS
    assert site_paths == [str(site)]
    assert Path(gpu_check.os.environ["FMNIST_DEBIAN_DIR"]) == (bundle / "data").resolve()
    log = tmp_path / "log"
    probe = [sys.executable, "-c", "import fmnist_bundle_probe as p; print(p.ANSWER)"]
    assert gpu_check.run(probe, 60, tmp_path, log)[::2] == ("ok", "42")  # a step finds it
    with pytest.raises(SystemExit, match="is not a bundle"):
        gpu_check.use_bundle(tmp_path / "src", site)
    # the compiled distributions its wheels need must come with this Python: named when missing
    needed = {"from_the_machine": {"numpy": "2", "no-such-distribution": "1"}}
    (bundle / "manifest.json").write_text(json.dumps(needed))
    assert gpu_check.lacking(bundle) == ["no-such-distribution"]
    assert gpu_check.lacking(None) == []


def test_the_bundle_holds_the_pure_python_closure_and_leaves_torch_to_the_machine():
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "scripts" / "gpu_bundle.py")
    gpu_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bundle)
    dists = gpu_bundle.closure()
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "pytest", "torch"} <= set(dists)
    torchs = [name for name in dists if name.startswith(("nvidia-", "cuda-")) or name == "sympy"]
    assert not torchs  # torch's own requirements are not walked: the machine's PyTorch has them
    assert gpu_bundle.is_pure(dists["hydra-core"]) and not gpu_bundle.is_pure(dists["torch"])
