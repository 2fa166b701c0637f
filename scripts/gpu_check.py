"""One prepared check of everything that runs differently on a CUDA GPU, within about 8 minutes.

    scripts/gpu-check                 # or: .venv/bin/python scripts/gpu_check.py [--budget-s 480]

Steps, each under its own time limit, in the order that tells most first: tests/test_cuda.py, the
default run on CUDA, `make bench`'s rows on CUDA, a fused 16-seed sweep against one run, and
`experiment=best_gpu` for whatever time is left. Prints one table and writes gpu-check.json
(machine, GPU, commit, each step's status, seconds and figure). Without CUDA it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(cmd: list[str], timeout: float, cwd: Path) -> tuple[str, float, str]:
    """(status, seconds, last output line) of a command: ok, failed (exit N) or timeout."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=max(1.0, timeout)
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return "timeout", time.perf_counter() - start, (out.strip().splitlines() or [""])[-1]
    lines = (done.stdout + done.stderr).strip().splitlines() or [""]
    status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return status, time.perf_counter() - start, lines[-1][:160]


def last_row(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "results.json").read_text())[-1]
    except (OSError, ValueError, IndexError):
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480, help="the whole check's time")
    parser.add_argument("--out", default=str(ROOT / "gpu-check.json"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    train = [PY, str(ROOT / "train.py"), "callbacks.progress.bar=false"]
    rows = []

    def step(name: str, cmd: list[str], share: float, figure=None) -> None:  # noqa: ANN001
        left = deadline - time.monotonic()
        if left < 10:
            rows.append({"step": name, "status": "skipped (no time left)"})
            return
        status, seconds, tail = run(cmd, min(left, share * args.budget_s), work)
        row = {"step": name, "status": status, "seconds": round(seconds, 1), "last_line": tail}
        if figure is not None and status == "ok":
            row["figure"] = figure()
        rows.append(row)
        print(f"{name:<34} {status:<18} {seconds:7.1f} s  {row.get('figure', '')}", flush=True)

    step(
        "tests/test_cuda.py",
        [PY, "-m", "pytest", "-q", "-x", str(ROOT / "tests/test_cuda.py")],
        0.3,
    )
    one = work / "default"
    step(
        "default run (5 epochs), cuda",
        [*train, f"hydra.run.dir={one}"],
        0.15,
        lambda: {
            "test_accuracy": last_row(one).get("test_accuracy"),
            "s_per_epoch": last_row(one).get("run_duration", 0)
            / max(1, last_row(one).get("epoch", 1)),
        },
    )
    bench = work / "bench.json"
    step(
        "make bench rows, cuda",
        [PY, str(ROOT / "scripts/bench.py"), "--device", "cuda", "--out", str(bench)],
        0.2,
        lambda: json.loads(bench.read_text()).get("checks") if bench.is_file() else None,
    )
    alone, fused = work / "one", work / "fused16"
    step("one run, 1 epoch", [*train, "epochs=1", f"hydra.run.dir={alone}"], 0.05)
    seeds = ",".join(map(str, range(16)))
    step(
        "fused 16 seeds, 1 epoch",
        [*train, "-m", "hydra/launcher=fused", "hydra.launcher.probe=false", f"seed={seeds}"]
        + ["epochs=1", f"hydra.sweep.dir={fused}"],
        0.15,
    )
    timed = {r["step"]: r.get("seconds") for r in rows}
    if timed.get("one run, 1 epoch") and timed.get("fused 16 seeds, 1 epoch"):
        rows[-1]["figure"] = {
            "time_vs_one_run": round(
                timed["fused 16 seeds, 1 epoch"] / timed["one run, 1 epoch"], 2
            )
        }
    best = work / "best_gpu"
    step(
        "experiment=best_gpu (what fits)",
        [*train, "experiment=best_gpu", f"hydra.run.dir={best}"],
        1.0,
        lambda: {"test_accuracy": last_row(best).get("test_accuracy")},
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "commit": commit or None,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['gpu']} x{report['gpus']}, torch {report['torch']}, commit {commit}")
    print(f"wrote {args.out} (work files in {work})")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
