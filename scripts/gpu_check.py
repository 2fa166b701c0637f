"""One prepared check of everything that runs differently on a CUDA GPU, within about 8 minutes.

    scripts/gpu-check                 # or: python scripts/gpu_check.py [--budget-s 480] [--out-dir D]

Steps, each under its own time limit, in the order that tells most first: the data set (no
download), tests/test_cuda.py, the default run forced onto CUDA, `make bench`'s rows on CUDA (one
epoch each, no grid), a fused 16-seed sweep against one run, the pool launcher (2 jobs on each GPU:
which GPU and cores each job got, and whether they overlapped), and `experiment=best_gpu` with
`budget_min` set to the time left (at most its 5-minute target). Writes gpu-check.json (machine,
GPU, commit, each step's status, seconds and figures) after every step and every step's output to
gpu-check.log, both in --out-dir, so a check cut short keeps what it did. Without CUDA it says so.

A GPU machine without internet: `make gpu-bundle` on a machine with it, copy the checkout with its
gpu-bundle/ folder, then `scripts/gpu-check --bundle gpu-bundle` there: the wheels that machine's
Python lacks are installed into --out-dir (no index, no network) and the data set is decompressed
from the bundle. `--preflight` runs only what needs no GPU (the packages, the data set, one tiny
run and a tiny pool sweep on the CPU), to try a bundle before it travels.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# the checkout first (a python without the .venv's link), then a bundle's wheels, then the caller's
PATHS = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
# what the steps import; a bundle brings the pure-Python ones, the machine's Python the others
REQUIRED = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "tensorboard", "psutil")
REQUIRED += ("hydra", "omegaconf", "platformdirs", "joblib", "submitit", "tqdm", "pytest")
REQUIRED += ("yaml", "google.protobuf")  # compiled, under omegaconf and tensorboard
BEST_GPU_TARGET_MIN = 5.0  # experiment=best_gpu's target: 0.955 within 5 minutes


def run(cmd: list[str], timeout: float, cwd: Path, log: Path) -> tuple[str, float, str]:
    """(status, seconds, last output line) of a command, its output appended to `log`: ok,
    failed (exit N) or timeout (the command and every process it started are killed)."""
    import psutil

    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        at = out.tell()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *PATHS])}
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code, family = None, []  # test runs and pool workers must not hold the GPU later
            with contextlib.suppress(psutil.Error):
                family = psutil.Process(proc.pid).children(recursive=True)
            if hasattr(os, "killpg"):  # its whole session at once: nothing starts meanwhile
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            for p in family:  # any that left the session
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
    with log.open(errors="replace") as out:
        out.seek(at)
        lines = out.read().strip().splitlines() or [""]
    status = "timeout" if code is None else "ok" if code == 0 else f"failed (exit {code})"
    return status, time.perf_counter() - start, lines[-1][:200]


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_row(run_dir: Path) -> dict:
    rows = read_json(run_dir / "results.json")
    return rows[-1] if isinstance(rows, list) and rows else {}


def git_commit() -> str:
    """The checkout's commit, or "" (a copy without .git, or no git installed)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def pool_figure(sweep: Path) -> dict:
    """Each pool job's GPU, cores and time span, and whether jobs ran at once (slots busy)."""
    jobs = []
    for prov in sorted(sweep.glob("*/provenance.json")):
        record, status = read_json(prov), read_json(prov.parent / "status.json")
        record, status = (x if isinstance(x, dict) else {} for x in (record, status))
        hw = record.get("hardware") if isinstance(record.get("hardware"), dict) else {}
        jobs.append(
            {
                "job": prov.parent.name,
                "slot": record.get("slot"),
                "device": hw.get("device"),
                "cuda_visible_devices": hw.get("cuda_visible_devices"),
                "status": status.get("status"),
                "started": status.get("started"),
                "ended": status.get("ended"),
            }
        )
    spans = sorted((j["started"], j["ended"]) for j in jobs if j["started"] and j["ended"])
    overlapped = any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    on_cuda = bool(jobs) and all(str(j["device"]).startswith("cuda") for j in jobs)
    return {"jobs": jobs, "all_on_cuda": on_cuda, "jobs_overlapped": overlapped}


def use_bundle(bundle: Path, site: Path) -> list[str]:
    """Install the bundle's wheels whose distribution this Python lacks into `site` (no index,
    no network: the others stay as the machine has them), put `site` on the path of this process
    and of every step, and let the data set come from the bundle's compressed files. Returns the
    wheels installed."""
    from importlib import metadata

    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels or not (bundle / "data").is_dir():
        raise SystemExit(f"gpu-check: {bundle} is not a bundle (make gpu-bundle writes one)")
    shutil.rmtree(site, ignore_errors=True)  # nothing of an earlier check's install stays
    missing = []
    for wheel in wheels:
        try:
            metadata.distribution(wheel.name.split("-")[0])
        except metadata.PackageNotFoundError:
            missing.append(wheel)
    if missing:
        cmd = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade"]
        cmd += ["--target", str(site), *map(str, missing)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise SystemExit(f"gpu-check: installing the bundle's wheels failed: {why}")
        sys.path.insert(0, str(site))
        PATHS.insert(0, str(site))
    os.environ["FMNIST_DEBIAN_DIR"] = str(bundle.resolve() / "data")  # read where files lack
    importlib.invalidate_caches()
    return [w.name.split("-")[0] for w in missing]


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def lacking(bundle: Path | None) -> list[str]:
    """The modules the steps import and, with a bundle, the compiled distributions its wheels
    need (its manifest lists them: they must come with this machine's Python)."""
    names = [module for module in REQUIRED if not importable(module)]
    if bundle is not None:
        from importlib import metadata

        manifest = read_json(bundle / "manifest.json")
        needed = manifest.get("from_the_machine", {}) if isinstance(manifest, dict) else {}
        for dist in needed:
            try:
                metadata.distribution(dist)
            except metadata.PackageNotFoundError:
                names.append(dist)
    return list(dict.fromkeys(names))


def preflight(out: Path) -> int:
    """The steps that need no GPU, on the CPU: what a bundle or a new machine is tried with."""
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if "FMNIST_DEBIAN_DIR" in os.environ:  # a bundle's data: decompressed here, not found ready
        os.environ["FMNIST_DATA"] = str(work / "data")
    log = out / "preflight.log"
    log.write_text("")
    tiny = ["callbacks.progress.bar=false", "device=cpu", "epochs=1"]
    tiny += ["limit_train_batches=2", "limit_test_batches=1"]
    steps = {
        "data set (no download)": [PY, "-m", "fmnist.data.prepare", "--no-download"],
        "a tiny run, cpu": [PY, str(ROOT / "train.py"), *tiny, f"hydra.run.dir={work / 'run'}"],
        "a tiny pool sweep, cpu": [PY, str(ROOT / "train.py"), "-m", "hydra/launcher=pool"]
        + [*tiny, "seed=0,1", f"hydra.sweep.dir={work / 'pool'}"],
    }
    rows = []
    for name, cmd in steps.items():
        status, seconds, tail = run(cmd, 300, work, log)
        rows.append({"step": name, "status": status, "seconds": round(seconds, 1), "last": tail})
        print(f"{name:<36} {status:<18} {seconds:7.1f} s  {tail}", flush=True)
    (out / "preflight.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480, help="the whole check's time")
    parser.add_argument("--out-dir", default=str(ROOT / "gpu-check"), help="json and log here")
    parser.add_argument("--bundle", help="a folder from `make gpu-bundle`: no internet needed")
    parser.add_argument("--preflight", action="store_true", help="only what needs no GPU")
    args = parser.parse_args()
    if args.bundle:
        site = Path(args.out_dir).resolve() / "site-packages"
        installed = use_bundle(Path(args.bundle), site)
        print(f"gpu-check: installed from the bundle: {', '.join(installed) or 'nothing'}")
    missing = lacking(Path(args.bundle) if args.bundle else None)
    if missing:
        print(
            f"gpu-check: this Python lacks {', '.join(missing)}: `make install` (with internet), "
            "or --bundle DIR from `make gpu-bundle` for the pure-Python ones (compiled ones, "
            "such as torch, numpy or pyyaml, come with this machine's Python)",
            file=sys.stderr,
        )
        return 1
    if args.preflight:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        return preflight(Path(args.out_dir))
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path, log = out / "gpu-check.json", out / "gpu-check.log"
    log.write_text("")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    train = [PY, str(ROOT / "train.py"), "callbacks.progress.bar=false"]
    commit = git_commit()
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "commit": commit or None,
        "work_dir": str(work),
        "rows": [],
    }
    rows = report["rows"]

    def step(name: str, cmd: list[str], share: float, figure: Callable | None = None) -> str:
        left = deadline - time.monotonic()
        if left < 10:
            rows.append({"step": name, "status": "skipped (no time left)"})
            return "skipped"
        status, seconds, tail = run(cmd, min(left, share * args.budget_s), work, log)
        row = {"step": name, "status": status, "seconds": round(seconds, 1), "last_line": tail}
        if figure is not None:  # a timed-out run's rows so far tell something too
            try:
                row["figure"] = figure()
            except Exception as exc:  # noqa: BLE001  (the check goes on; the row says why)
                row["figure"] = f"unreadable: {type(exc).__name__}: {exc}"
        rows.append(row)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{name:<36} {status:<18} {seconds:7.1f} s  {row.get('figure', '')}", flush=True)
        return status

    data = [PY, "-m", "fmnist.data.prepare", "--no-download"]
    if step("data set (no download)", data, 0.1) != "ok":
        print(f"gpu-check: no data set; see {log}", file=sys.stderr)
        return 1
    step(
        "tests/test_cuda.py",
        [
            PY,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests/test_cuda.py"),
        ],
        0.25,
    )
    one = work / "default"
    step(
        "default run (5 epochs), device=cuda",
        [*train, "device=cuda", f"hydra.run.dir={one}"],
        0.1,
        lambda: {
            "device": (read_json(one / "provenance.json") or {}).get("hardware", {}).get("device"),
            "test_accuracy": last_row(one).get("test_accuracy"),
            "s_per_epoch": last_row(one).get("run_duration", 0)
            / max(1, last_row(one).get("epoch", 1)),
        },
    )
    bench = work / "bench.json"
    step(
        "make bench rows, cuda (1 epoch each)",
        [PY, str(ROOT / "scripts/bench.py"), "--device", "cuda", "--no-grid", "--epochs", "1"]
        + ["--out", str(bench)],
        0.15,
        lambda: (read_json(bench) or {}).get("checks"),
    )
    alone, fused = work / "one", work / "fused16"
    step("one run, 1 epoch", [*train, "epochs=1", f"hydra.run.dir={alone}"], 0.05)
    seeds = ",".join(map(str, range(16)))
    step(
        "fused 16 seeds, 1 epoch",
        [*train, "-m", "hydra/launcher=fused", "hydra.launcher.probe=false", f"seed={seeds}"]
        + ["epochs=1", f"hydra.sweep.dir={fused}"],
        0.1,
    )
    timed = {r["step"]: r.get("seconds") for r in rows if r.get("status") == "ok"}
    if timed.get("one run, 1 epoch") and timed.get("fused 16 seeds, 1 epoch"):
        rows[-1]["figure"] = {
            "time_vs_one_run": round(
                timed["fused 16 seeds, 1 epoch"] / timed["one run, 1 epoch"], 2
            )
        }
    pool = work / "pool"
    jobs = 2 * torch.cuda.device_count()
    step(
        f"pool, 2 jobs a GPU, {2 * jobs} jobs",
        [*train, "-m", "hydra/launcher=pool", "hydra.launcher.jobs_per_device=2"]
        + [f"seed={','.join(map(str, range(2 * jobs)))}", "epochs=2", "limit_train_batches=100"]
        + [f"hydra.sweep.dir={pool}"],
        0.1,
        lambda: pool_figure(pool),
    )
    best = work / "best_gpu"
    minutes = min(BEST_GPU_TARGET_MIN, (deadline - time.monotonic() - 45) / 60 / 1.1)
    if minutes >= 0.5:
        step(
            f"experiment=best_gpu budget_min={minutes:.1f}",
            [*train, "experiment=best_gpu", f"budget_min={minutes:.2f}", f"hydra.run.dir={best}"],
            1.0,
            lambda: {
                "epochs_chosen": (read_json(best / "status.json") or {}).get("epochs"),
                "val_accuracy": last_row(best).get("val_accuracy"),
                "test_accuracy": last_row(best).get("test_accuracy"),
                "run_duration_s": last_row(best).get("run_duration"),
            },
        )
    else:
        rows.append({"step": "experiment=best_gpu", "status": "skipped (no time left)"})
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['gpu']} x{report['gpus']}, torch {report['torch']}, commit {commit}")
    print(f"wrote {report_path} and {log} (run directories in {work})")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
