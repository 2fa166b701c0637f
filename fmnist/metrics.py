"""What a run measures: one table of metric names, formats and TensorBoard tags, their
directions, and which epoch an objective selects. Evaluating a model is `fmnist.evaluation`.

Every reader of a results row (the progress table, TensorBoard, compare) takes names from
`METRICS`, so a new metric is one line here. No torch: the config and compare read this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str  # the results column
    fmt: str | None  # how the progress table shows it; None = not shown there
    tag: str | None  # TensorBoard scalar tag; None = not a scalar


METRICS = (
    Metric("epoch", "{:d}", None),
    Metric("loss", "{:.4f}", "Loss/train"),
    Metric("accuracy", "{:.4f}", "Accuracy/train"),
    Metric("num_correct", None, "Number Correct/train"),
    Metric("val_loss", "{:.4f}", "Loss/val"),
    Metric("val_accuracy", "{:.4f}", "Accuracy/val"),
    Metric("test_loss", "{:.4f}", "Loss/test"),
    Metric("test_accuracy", "{:.4f}", "Accuracy/test"),
    Metric("test_num_correct", None, "Number Correct/test"),
    Metric("lr_current", None, "LearningRate"),
    Metric("epoch_duration", "{:.1f}s", "Time/epoch_seconds"),
    Metric("run_duration", "{:.1f}s", None),
)
METRIC_NAMES = frozenset(m.name for m in METRICS) | {"run"}  # the rest of a row: hyperparameters


def direction(name: str) -> str | None:
    """ "max" or "min" for a metric or a compare column, by what it measures (accuracies up;
    losses and durations down); None for anything else (a hyperparameter). The one place."""
    if name.endswith(("accuracy", "num_correct")):
        return "max"
    if name.endswith(("loss", "duration", "duration_s")):
        return "min"
    return None


def column_format(name: str) -> str:
    """How tables show a metric column's value: 4 decimals for accuracies and losses."""
    return "{:.1f}" if name.endswith(("duration", "duration_s")) else "{:.4f}"


# The objective: what best.pt follows, what a sweeper optimizes, what compare ranks by.
# Only validation metrics may select; the direction follows from the name.
OBJECTIVES = {name: direction(name) for name in ("val_accuracy", "val_loss")}


def better(monitor: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` improves on `best` by more than `min_delta` in `monitor`'s direction."""
    if best is None:
        return True
    return value > best + min_delta if OBJECTIVES[monitor] == "max" else value < best - min_delta


def select(history: list[dict[str, Any]], monitor: str | None) -> dict[str, Any]:
    """The epoch the objective selects (the first of equals) among the evaluated ones; the last
    without one. best.pt, the sweep summary and fmnist-compare all take it from here."""
    if not history:
        return {}
    scored = [
        h for h in history if isinstance(h.get(monitor), int | float) and h[monitor] == h[monitor]
    ]
    if monitor is None or not scored:
        return history[-1]
    sign = 1 if OBJECTIVES[monitor] == "max" else -1
    return max(scored, key=lambda h: (sign * h[monitor], -h["epoch"]))
