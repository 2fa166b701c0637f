"""A progress bar per epoch (only on a terminal) and the article's results table, a row an epoch.

The table's columns are the metrics with a format in `fmnist.metrics.METRICS`."""

from __future__ import annotations

import sys
from typing import Any

import torch
from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal

from fmnist.callbacks.base import Callback, RunState
from fmnist.metrics import METRICS


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (its output is a notebook, not a log)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None
    return ip is not None and hasattr(ip, "kernel")


class ProgressCallback(Callback):
    def __init__(self, bar: bool | None = None, refresh_batches: int = 20):
        # by default in a terminal or a notebook; quiet in logs and CI
        self.bar_enabled = (sys.stderr.isatty() or in_notebook()) if bar is None else bar
        self.refresh_batches = refresh_batches  # batches between updates of loss and accuracy
        self.bar: tqdm | None = None
        self._pending: tuple[torch.Tensor, int, torch.cuda.Event] | None = None
        self._header_done = False

    def on_epoch_start(self, state: RunState) -> None:
        if self.bar_enabled:
            self.bar = tqdm(
                total=state.batches_per_epoch,
                desc=f"epoch {state.epoch}/{state.cfg.epochs}",
                leave=False,
                dynamic_ncols=True,
                unit="batch",
            )

    def on_batch_end(self, state: RunState, batch_idx: int) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if batch_idx % self.refresh_batches == 0 and state.running_seen:
            shown = self._read_sums(state)
            if shown is not None:
                (loss, correct), seen = shown
                self.bar.set_postfix(loss=f"{loss / seen:.4f}", acc=f"{correct / seen:.4f}")

    def _read_sums(self, state: RunState) -> tuple[list[float], int] | None:
        """The epoch's loss and correct sums. On a GPU, never wait: show the copy queued at the
        previous update once it has arrived (one update late), and queue the next one."""
        sums = torch.stack((state.running_loss.float(), state.running_correct.float()))
        if not sums.is_cuda:
            return sums.tolist(), state.running_seen
        shown = None
        if self._pending is not None and self._pending[2].query():
            shown = self._pending[0].tolist(), self._pending[1]
        if self._pending is None or shown is not None:
            host = torch.empty(2, pin_memory=True)
            host.copy_(sums, non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record()
            self._pending = (host, state.running_seen, arrived)
        return shown

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        self._pending = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shown = [m for m in METRICS if m.fmt and (m.name in row or self._evaluated(state, m.name))]
        columns = [(m.name, m.fmt.format(row[m.name]) if m.name in row else "-") for m in shown]
        if not self._header_done:
            state.log.info("%s", " ".join(name.rjust(len(name) + 1) for name, _ in columns))
            self._header_done = True
        state.log.info("%s", " ".join(cell.rjust(len(name) + 1) for name, cell in columns))

    @staticmethod
    def _evaluated(state: RunState, name: str) -> bool:
        """A val/test column this run has on evaluated epochs: "-" on the others (eval_every)."""
        has_val = state.data is not None and state.data.val is not None
        return name.startswith("test_") or (name.startswith("val_") and has_val)

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
