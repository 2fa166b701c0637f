"""What the loop and the callbacks share about a run, and the checkpoint that captures it."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from fmnist import CLASSES

if TYPE_CHECKING:  # types only: the tracker and the data import this module, not the reverse
    from fmnist.callbacks.base import Tracker
    from fmnist.data.loaders import FashionMNISTData

CHECKPOINT_FORMAT = 2  # 2: self-describing (model config, classes, input, provenance)
INPUT = {"shape": [1, 28, 28], "scale": "pixel / 255", "background": "dark", "dtype": "float32"}


@dataclass
class RunState:
    """Everything a callback may read about the run; the loop updates it as it goes."""

    cfg: DictConfig
    run_dir: Path
    name: str  # the run's label in tables and TensorBoard: its directory name
    hparams: dict[str, Any]  # flat, plain values: what varies between runs
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    data: FashionMNISTData
    device: torch.device
    model_config: dict[str, Any]  # {"target", "kwargs"}: enough to rebuild the model
    monitor: str | None  # the objective (val_accuracy...); None = no validation, no selection
    batches_per_epoch: int
    tracker: Tracker | None = None  # its callbacks' states go into checkpoints
    ema: torch.optim.swa_utils.AveragedModel | None = None  # evaluated instead of `model`
    graphs: bool = False  # training steps replayed as a CUDA graph (engine/graphs.py)
    bf16: bool = False
    bf16_reason: str = ""  # why bf16 is on or off (runtime.bf16=auto decides from the CPU)
    threads: int = 0  # torch intra-op threads this run uses
    budget: dict[str, Any] | None = None  # budget_min's choice and timings (engine/budget.py)
    provenance: dict[str, Any] = field(default_factory=dict)  # provenance.json, once written
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
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> evaluate() result
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "epoch", ...}
    should_stop: str | None = None  # set by a callback (early stopping): why the run ends now
    end_status: str = "completed"  # what a run that ends normally records; "pruned" by a search
    error: BaseException | None = None  # why the run failed; None while it trains or completed
    # the run's own logger: its train.log and the console (fmnist.run.directory.RunDirectory)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("fmnist"))

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0

    @property
    def progressed(self) -> bool:
        """Whether this process finished an epoch of the run."""
        return bool(self.history) and self.history[-1]["epoch"] > self.start_epoch

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated, selected and exported: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(int, np_state[2:4]),
            float(np_state[4]),
        ],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def checkpoint_payload(state: RunState) -> dict[str, Any]:
    """The whole state a run needs to continue exactly, and what a user needs to use the model.

    `model` holds the evaluated weights (the EMA when on), so evaluate, predict and export use
    what was selected; `train_model` holds the raw weights the optimizer trains.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "model": state.eval_model.state_dict(),
        "model_config": state.model_config,
        "classes": list(CLASSES),
        "input": INPUT,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "rng": rng_state(),
        "history": state.history,
        "best": state.best,
        "callbacks": state.tracker.state_dict() if state.tracker is not None else {},
        "duration": state.history[-1]["run_duration"] if state.history else 0.0,
        "hparams": state.hparams,
        "monitor": state.monitor,
        "split": {"val_size": state.cfg.data.val_size, "split_seed": state.cfg.data.split_seed},
        "tta": bool(state.cfg.tta),
        "tta_translate": int(state.cfg.tta_translate) if state.cfg.tta else 0,
        "provenance": state.provenance,
    }
    if state.ema is not None:
        payload["train_model"] = state.model.state_dict()
        payload["ema_updates"] = int(state.ema.n_averaged.item())
    return payload
