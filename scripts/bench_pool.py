"""The pool launcher against batches and one job at a time, in one run.

- a 10-trial Optuna search with 2 trials at once whose trials differ in length (batch 32 or 1000):
  how busy its 2 slots are, the sum of the trials' durations (status.json) / (2 x the span from
  the first start to the last end), over `hydra/launcher=pool` (no batches) and `joblib`
  (batches of 2);
- the README grid (lr x batch_size, 2 epochs) end to end under `pool` and `basic`.

Each case is a real `python train.py ...` in a subprocess. Writes bench_pool.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_fused import write_report  # noqa: E402  (scripts/ is on the path of its scripts)

SEARCH = [
    *["hparams_search=optuna", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=10", "epochs=4"],
    *["limit_train_batches=60", "hydra.sweeper.params.batch_size='choice(32,1000)'"],
    "hydra.sweeper.pruner=none",  # every trial runs its 4 epochs: the lengths differ by batch only
]
GRID = ["-m", "lr=0.01,0.001", "batch_size=100,1000", "epochs=2"]


def run(args: list[str], launcher: str) -> tuple[float, list[dict]]:
    """Wall seconds and every job's status.json."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args, f"hydra/launcher={launcher}"]
            + ["callbacks.progress.bar=false", f"hydra.sweep.dir={tmp}/sweep"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        statuses = [json.loads(p.read_text()) for p in Path(tmp).rglob("status.json")]
    if done.returncode != 0 or {s.get("status") for s in statuses} != {"completed"}:
        raise SystemExit(f"{launcher} {args} failed:\n{done.stderr[-2000:]}")
    return wall, statuses


def busy(statuses: list[dict], slots: int = 2) -> dict[str, float]:
    spans = [
        (datetime.fromisoformat(s["started"]), datetime.fromisoformat(s["ended"])) for s in statuses
    ]
    span = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
    work = sum((e - b).total_seconds() for b, e in spans)
    return {"busy": round(work / (slots * span), 3), "span_s": round(span, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench_pool.json"))
    args = parser.parse_args()
    rows = {}
    for launcher in ("pool", "joblib"):
        wall, statuses = run(SEARCH, launcher)
        rows[f"search, {launcher}"] = {"wall_s": round(wall, 1), **busy(statuses)}
    for launcher in ("pool", "basic"):
        wall, _ = run(GRID, launcher)
        rows[f"README grid, {launcher}"] = {"wall_s": round(wall, 1)}
    for name, row in rows.items():
        print(f"{name:<22} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    ratio = rows["README grid, basic"]["wall_s"] / rows["README grid, pool"]["wall_s"]
    print(f"README grid: pool {ratio:.2f}x faster than basic")
    write_report(Path(args.out), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
