"""The tracker: the training loop calls these hooks and knows nothing of files or TensorBoard."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything a callback may read about the run; the loop updates it as it goes."""

    cfg: DictConfig
    run_dir: Path
    name: str  # the run's label in tables and TensorBoard: its directory name
    hparams: dict[str, Any]  # flat, plain values: what varies between runs
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: Any  # FashionMNISTData
    device: torch.device
    graphs: bool = False  # training steps replayed as a CUDA graph (fmnist/graphs.py)
    epoch: int = 0  # 1-based number of the epoch in progress or just finished
    start_epoch: int = 0  # epochs already done before this process started (resume)
    step: int = 0  # optimizer steps so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    previous_duration: float = 0.0  # seconds spent by earlier attempts of a resumed run
    run_start: float = 0.0
    epoch_start: float = 0.0
    running_loss: torch.Tensor | None = None  # device tensors: read them rarely
    running_correct: torch.Tensor | None = None
    running_seen: int = 0
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> predictions etc.
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "epoch"}
    extra: dict[str, Any] = field(default_factory=dict)  # callbacks' own resumable state

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0


class Callback:
    """Override the hooks you need. Order of calls for a run:

    on_run_start, then per epoch: on_epoch_start, on_batch_end (every batch), on_epoch_end;
    finally on_run_end, or on_exception if the run raised or was interrupted.
    """

    def on_run_start(self, state: RunState) -> None: ...

    def on_epoch_start(self, state: RunState) -> None: ...

    def on_batch_end(self, state: RunState, batch_idx: int) -> None: ...

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None: ...

    def on_run_end(self, state: RunState) -> None: ...

    def on_exception(self, state: RunState, exc: BaseException) -> None: ...


class Tracker(Callback):
    """Calls every callback in order; a callback failing in on_exception never hides the cause."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks
        self._batch_callbacks = [
            cb for cb in callbacks if type(cb).on_batch_end is not Callback.on_batch_end
        ]  # skip no-op hooks in the hot loop

    def on_run_start(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_run_start(state)

    def on_epoch_start(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(state)

    def on_batch_end(self, state: RunState, batch_idx: int) -> None:
        for cb in self._batch_callbacks:
            cb.on_batch_end(state, batch_idx)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)

    def on_run_end(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_run_end(state)

    def on_exception(self, state: RunState, exc: BaseException) -> None:
        for cb in self.callbacks:
            try:
                cb.on_exception(state, exc)
            except Exception:
                log.exception("callback %s failed while handling %r", type(cb).__name__, exc)
