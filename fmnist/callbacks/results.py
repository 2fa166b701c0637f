"""`results.csv` and `results.json`: one row per epoch, rewritten atomically after each epoch."""

from __future__ import annotations

import csv
import io
from typing import Any

from fmnist import CLASSES
from fmnist.callbacks.base import Callback, RunState
from fmnist.metrics import METRICS
from fmnist.run.files import write_json, write_text


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Metrics in METRICS' order, then the hyperparameters; a row without a column (an epoch
    not evaluated: eval_every) leaves its cell empty."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    order = {m.name: i for i, m in enumerate(METRICS)} | {"run": -1}
    columns.sort(key=lambda c: order.get(c, len(order)))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def confusion_csv(matrix: list[list[int]]) -> str:
    """Rows are true classes, columns predicted classes, both named."""
    rows = [["true \\ predicted", *CLASSES]]
    rows += [[CLASSES[i], *map(str, counts)] for i, counts in enumerate(matrix)]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class ResultsCallback(Callback):
    def __init__(self, csv_name: str = "results.csv", json_name: str = "results.json"):
        self.csv_name, self.json_name = csv_name, json_name

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        # state.history already holds this row; it is restored from the checkpoint on resume,
        # so rewriting the whole file never duplicates nor drops an epoch.
        write_text(state.run_dir / self.csv_name, rows_to_csv(state.history))
        write_json(state.run_dir / self.json_name, state.history)

    def on_run_end(self, state: RunState) -> None:
        test = state.evals.get("test")
        if test is not None:
            write_text(state.run_dir / "confusion_matrix.csv", confusion_csv(test["confusion"]))
