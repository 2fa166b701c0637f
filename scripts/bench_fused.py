"""Fused sweeps against one job at a time (basic) and two processes (joblib), in one run.

Each case is a real `python train.py -m ...` in a subprocess; wall time includes process
start-up, data loading and every callback. Writes bench_fused.json beside bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmnist.cpu import cpu_model  # noqa: E402
from fmnist.run import provenance  # noqa: E402

SWEEPS = {
    "README grid (lr x batch_size, 5 epochs)": ["lr=0.01,0.001", "batch_size=100,1000"],
    "article grid (lr x batch_size x shuffle, 5 epochs)": [
        "lr=0.01,0.001",
        "batch_size=100,1000",
        "shuffle=true,false",
    ],
    "16 seeds of the default (seed_cnn, batch 100), 1 epoch": [
        "epochs=1",
        "seed=" + ",".join(map(str, range(16))),
    ],
    "16 seeds of experiment=fast_bn_cnn, 1 epoch": [
        "experiment=fast_bn_cnn",  # the bn_cnn preset the fused figures in README were measured on
        "epochs=1",
        "seed=" + ",".join(map(str, range(16))),
    ],
}
LAUNCHERS = ("basic", "fused", "joblib")


def sweep_seconds(args: list[str], launcher: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "-m",
                *args,
                f"hydra/launcher={launcher}",
                f"hydra.sweep.dir={tmp}/sweep",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        ended = [json.loads(p.read_text()).get("status") for p in Path(tmp).rglob("status.json")]
    if done.returncode != 0 or set(ended) != {"completed"}:
        raise SystemExit(f"{launcher} sweep {args} failed:\n{done.stderr[-2000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the sweeps whose name contains this")
    parser.add_argument("--out", default=str(ROOT / "bench_fused.json"))
    args = parser.parse_args()
    rows = []
    for name, sweep in SWEEPS.items():
        if args.only and args.only not in name:
            continue
        times = {launcher: sweep_seconds(sweep, launcher) for launcher in LAUNCHERS}
        rows.append({"sweep": name, "args": sweep, "seconds": times})
        print(
            f"{name:<52} "
            + "  ".join(f"{k} {v:6.1f} s" for k, v in times.items())
            + f"  fused speed-up vs basic {times['basic'] / times['fused']:.2f}x,"
            f" vs joblib {times['joblib'] / times['fused']:.2f}x",
            flush=True,
        )
    write_report(Path(args.out), rows)
    return 0


def write_report(path: Path, rows: Any) -> None:
    """`rows` with the machine and the commit they were measured on, as JSON."""
    git, _ = provenance.git_state()
    out = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "commit": provenance.short({"git": git}),
        "rows": rows,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"machine: {out['machine']}; commit {out['commit']}; wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
