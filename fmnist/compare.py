"""Compare runs: one row per run, sorted by best test accuracy, plus csv/json/md files and a plot.

python -m fmnist.compare outputs/sweeps/2026-11-27/10-00-00_123   # one sweep
python -m fmnist.compare outputs                                    # everything
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fmnist.io import read_json, write_json, write_text

SORT_KEYS = (
    "best_test_accuracy",
    "test_accuracy",
    "train_loss",
    "train_accuracy",
    "duration_s",
    "run",
)
HIDDEN = {"params"}  # derived from the model: shown, never used to tell runs apart


@dataclass
class Summary:
    root: Path
    table: pd.DataFrame
    constants: dict[str, Any] = field(default_factory=dict)
    varying: list[str] = field(default_factory=list)
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run -> curve
    seeds: pd.DataFrame | None = None  # mean and spread over seeds, when seed varies


def find_runs(path: Path) -> list[Path]:
    """Directories holding a run (status.json or results.json), at any depth."""
    found = {p.parent for name in ("status.json", "results.json") for p in path.rglob(name)}
    return sorted(found)


def _status(status: dict[str, Any] | None, history: list[dict[str, Any]]) -> str:
    if status is None:
        return "unknown"
    state = status.get("status", "unknown")
    if state == "running" and status.get("host") == socket.gethostname():
        try:
            os.kill(int(status.get("pid", 0)), 0)
        except (ProcessLookupError, ValueError):
            return "crashed"
        except PermissionError:
            pass
    return state


def load_run(run_dir: Path, root: Path) -> dict[str, Any]:
    status = _read(run_dir / "status.json")
    history = _read(run_dir / "results.json") or []
    hparams = dict((status or {}).get("hparams") or {})
    if not hparams and history:  # no status: recover hyperparameters from a results row
        hparams = {k: v for k, v in history[-1].items() if k not in _METRICS}
    error = (status or {}).get("error") or {}
    return {
        "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "dir": run_dir,
        "status": _status(status, history),
        "reason": f"{error.get('type')}: {error.get('message')}" if error else "",
        "hparams": hparams,
        "history": history,
    }


_METRICS = {
    "run",
    "epoch",
    "loss",
    "accuracy",
    "num_correct",
    "test_loss",
    "test_accuracy",
    "test_num_correct",
    "val_loss",
    "val_accuracy",
    "lr_current",
    "epoch_duration",
    "run_duration",
}


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def summarize(
    path: str | Path,
    sort: str = "best_test_accuracy",
    top: int | None = None,
    epoch: int | None = None,
) -> Summary:
    """Read every run under `path`; raises FileNotFoundError/ValueError with a one-line reason."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    runs = [load_run(d, root) for d in find_runs(root)]
    if not runs:
        raise ValueError(f"no runs under {root} (looked for status.json / results.json)")
    keys = sorted({k for r in runs for k in r["hparams"]})
    values = {k: {json.dumps(r["hparams"].get(k), sort_keys=True) for r in runs} for k in keys}
    varying = [k for k in keys if len(values[k]) > 1 and k not in HIDDEN]
    constants = {k: runs[0]["hparams"].get(k) for k in keys if len(values[k]) == 1}
    rows, curves = [], {}
    for r in runs:
        history = (
            r["history"] if epoch is None else [h for h in r["history"] if h["epoch"] <= epoch]
        )
        last = history[-1] if history else {}
        best = max(history, key=lambda h: h["test_accuracy"]) if history else {}
        row = {"run": r["run"], **{k: r["hparams"].get(k) for k in varying}}
        row |= {
            "test_accuracy": last.get("test_accuracy"),
            "best_test_accuracy": best.get("test_accuracy"),
            "best_epoch": best.get("epoch"),
            "train_loss": last.get("loss"),
            "train_accuracy": last.get("accuracy"),
            "epochs": last.get("epoch", 0),
            "duration_s": last.get("run_duration"),
            "status": r["status"],
        }
        if any("val_accuracy" in h for h in history):
            row["val_accuracy"] = last.get("val_accuracy")
        if r["reason"]:
            row["reason"] = r["reason"]
        rows.append(row)
        curves[r["run"]] = [(h["epoch"], h["test_accuracy"]) for h in history]
    table = pd.DataFrame(rows)
    for column in ("best_epoch", "epochs"):
        table[column] = table[column].astype("Int64")  # stays integer beside failed runs
    if sort not in table.columns:
        raise ValueError(f"--sort {sort}: not a column; choose one of {', '.join(table.columns)}")
    ascending = sort in ("train_loss", "duration_s", "run")
    table = table.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    seeds = across_seeds(table, varying)
    if top:
        table = table.head(top)
    return Summary(root, table, constants, varying, curves, seeds)


def across_seeds(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame | None:
    """Mean and sample standard deviation over seeds of otherwise identical completed runs.

    This is how a result is reported honestly: `-m experiment=fast seed=0,1,2`, then compare.
    """
    if "seed" not in varying:
        return None
    done = table[table["status"] == "completed"]
    keys = [k for k in varying if k != "seed"]
    groups = done.groupby([done[k].astype(str) for k in keys], sort=False) if keys else [((), done)]
    rows = []
    for _, group in groups:
        if len(group) < 2:
            continue
        accuracy = group["test_accuracy"].astype(float)
        row = {k: group[k].iloc[0] for k in keys}
        row |= {
            "seeds": len(group),
            "mean_test_accuracy": accuracy.mean(),
            "sd_test_accuracy": accuracy.std(ddof=1),
            "min_test_accuracy": accuracy.min(),
            "max_test_accuracy": accuracy.max(),
        }
        if "val_accuracy" in group:
            row["mean_val_accuracy"] = group["val_accuracy"].astype(float).mean()
        row["mean_duration_s"] = group["duration_s"].astype(float).mean()
        rows.append(row)
    if not rows:
        return None
    return pd.DataFrame(rows).sort_values("mean_test_accuracy", ascending=False, kind="stable")


METRIC_FORMATS = {"accuracy": "{:.4f}", "loss": "{:.4f}", "duration_s": "{:.1f}"}


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        for suffix, fmt in METRIC_FORMATS.items():
            if column.endswith(suffix):
                return fmt.format(value)
        return f"{value:g}"  # hyperparameters as typed: 0.001, 1e+12, 100
    return str(value)


def render(summary: Summary, markdown: bool = False) -> str:
    """The table (and the mean over seeds) as aligned text (terminal) or GitHub markdown."""
    lines = []
    if summary.constants:
        shared = ", ".join(f"{k}={_fmt(v, k)}" for k, v in summary.constants.items())
        lines += [f"{len(summary.table)} runs in {summary.root}; same for all: {shared}", ""]
    lines += _table(summary.table, markdown)
    if summary.seeds is not None:
        lines += ["", "Across seeds (completed runs; sd = sample standard deviation):", ""]
        lines += _table(summary.seeds, markdown)
    return "\n".join(lines)


def _table(table: pd.DataFrame, markdown: bool) -> list[str]:
    head = [str(c) for c in table.columns]
    body = [
        [_fmt(v, c) for v, c in zip(row, head, strict=True)]
        for row in table.astype(object).itertuples(index=False)
    ]
    if markdown:
        return [
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(row) + " |" for row in body),
        ]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    return [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body),
    ]


def label(summary: Summary, run: str) -> str:
    row = summary.table.set_index("run").loc[run]
    parts = [f"{k}={_fmt(row[k], k)}" for k in summary.varying]
    return ", ".join(parts) if parts else run


def plot(summary: Summary, path: Path) -> None:
    """Test accuracy per epoch for every run, and final test accuracy as bars."""
    from fmnist.plots import pyplot

    plt = pyplot()
    runs = list(summary.table["run"])
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(14, max(4.5, 0.35 * len(runs) + 2)), dpi=100)
    for run in runs:
        points = summary.epochs.get(run) or []
        if points:
            xs, ys = zip(*points, strict=True)
            curves.plot(xs, ys, marker="o", label=label(summary, run))
    curves.set_xlabel("epoch")
    curves.set_ylabel("test accuracy")
    curves.set_title("Test accuracy per epoch")
    curves.grid(alpha=0.3)
    if len(runs) <= 20:
        curves.legend(fontsize=8)
    finals = [v if v == v and v is not None else 0.0 for v in summary.table["test_accuracy"]]
    names = [
        label(summary, r) + ("" if s == "completed" else f" [{s}]")
        for r, s in zip(runs, summary.table["status"], strict=True)
    ]
    positions = range(len(runs))[::-1]
    bars.barh(list(positions), finals, color="tab:blue")
    bars.set_yticks(list(positions), names, fontsize=8)
    low = min([f for f in finals if f > 0] or [0.0])
    bars.set_xlim(max(0.0, low - 0.05), 1.0)
    for y, value in zip(positions, finals, strict=True):
        bars.text(value, y, f" {value:.4f}", va="center", fontsize=8)
    bars.set_xlabel("final test accuracy")
    bars.set_title("Final test accuracy per run")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(summary: Summary, out_dir: Path) -> list[Path]:
    paths = [out_dir / f"summary.{ext}" for ext in ("csv", "json", "md", "png")]
    write_text(paths[0], summary.table.to_csv(index=False))
    write_json(
        paths[1],
        {
            "root": str(summary.root),
            "constants": summary.constants,
            "varying": summary.varying,
            "runs": json.loads(summary.table.to_json(orient="records")),
            "across_seeds": None
            if summary.seeds is None
            else json.loads(summary.seeds.to_json(orient="records")),
        },
    )
    write_text(paths[2], render(summary, markdown=True) + "\n")
    plot(summary, paths[3])
    return paths


def report(path: str | Path, **options: Any) -> Summary:
    """Print the table and write the summary files into `path` (what a sweep does at its end)."""
    summary = summarize(path, **options)
    print(render(summary))
    paths = write(summary, Path(path))
    print(f"\nwrote {', '.join(p.name for p in paths)} in {path}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fmnist-compare", description="Compare runs of a sweep or of outputs/."
    )
    parser.add_argument("path", help="a sweep directory, or outputs/ for everything")
    parser.add_argument(
        "--sort",
        default="best_test_accuracy",
        help=f"column to sort by ({', '.join(SORT_KEYS)}, ...)",
    )
    parser.add_argument("--top", type=int, default=None, help="show only the best N runs")
    parser.add_argument("--epoch", type=int, default=None, help="compare as of this epoch")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    try:
        if args.no_write:
            print(render(summarize(args.path, args.sort, args.top, args.epoch)))
        else:
            report(args.path, sort=args.sort, top=args.top, epoch=args.epoch)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
