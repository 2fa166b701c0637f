"""The comparison as people read it: an aligned or markdown table, summary files and a plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from fmnist.commands.compare.table import SORT_KEYS, Summary, summarize
from fmnist.commands.console import closed_pipe_is_fine
from fmnist.metrics import column_format, direction
from fmnist.run.files import write_json, write_text


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        if direction(column) is not None:  # a metric column
            return column_format(column).format(value)
        return f"{value:g}"  # hyperparameters as typed: 0.001, 1e+12, 100
    return str(value)


def render(summary: Summary, markdown: bool = False) -> str:
    """The table (and the mean over seeds) as aligned text (terminal) or GitHub markdown."""
    lines = []
    if summary.constants:
        shared = ", ".join(f"{k}={_fmt(v, k)}" for k, v in summary.constants.items())
        lines += [f"{len(summary.table)} runs in {summary.root}; same for all: {shared}"]
    lines += [f"({summary.note})", ""]
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
    """The objective (else test accuracy) per epoch for every run, and each run's selected test
    accuracy as bars."""
    from matplotlib.ticker import MaxNLocator

    from fmnist.plots import pyplot

    plt = pyplot()
    metric = summary.monitor or "test_accuracy"
    runs = list(summary.table["run"])
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(14, max(4.5, 0.35 * len(runs) + 2)), dpi=100)
    for run in runs:
        points = summary.epochs.get(run) or []
        if points:
            xs, ys = zip(*points, strict=True)
            curves.plot(xs, ys, marker="o", label=label(summary, run))
    curves.set_xlabel("epoch")
    # epochs are whole numbers, one epoch too (min_n_ticks=1: else 0.5, 0.6 ... 1.5)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    last = max((p[0] for points in summary.epochs.values() for p in points or []), default=1)
    curves.set_xlim(0.5, last + 0.5)
    curves.set_ylabel(metric.replace("_", " "))
    curves.set_title(f"{metric.replace('_', ' ')} per epoch")
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
    what = (
        f"test accuracy at the epoch {summary.monitor} selected"
        if summary.monitor
        else "final test accuracy"
    )
    bars.set_xlabel(what)
    bars.set_title(what[0].upper() + what[1:])
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
            "monitor": summary.monitor,
            "note": summary.note,
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


@closed_pipe_is_fine
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fmnist-compare", description="Compare runs of a sweep or of outputs/."
    )
    parser.add_argument("path", help="a sweep directory, or outputs/ for everything")
    parser.add_argument(
        "--sort",
        default="objective",
        help=f"column to sort by ({', '.join(SORT_KEYS)}, ...); objective = the runs' monitor",
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
