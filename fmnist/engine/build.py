"""A run from its config: threads, device, data, model, optimizer, schedule, callbacks; restore."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fmnist import CLASSES
from fmnist.callbacks.base import Tracker
from fmnist.callbacks.status import StatusCallback
from fmnist.data import build_data
from fmnist.engine.graphs import load_optimizer_state, optimizer_options, want_graphs
from fmnist.engine.param_groups import param_groups
from fmnist.engine.runtime import configure, decide_bf16, pick_device, seed_everything
from fmnist.engine.state import RunState, set_rng_state
from fmnist.errors import ConfigError
from fmnist.models import build_model, check_fits_the_data, count_parameters, model_spec

FIT_IMAGES = 5000  # training images a model may fit itself to before training (whitening)


@contextmanager
def refused_as(key: str, choice: Any) -> Iterator[None]:
    """A value that composes but that torch or a callback refuses when built (momentum=-1,
    pct_start=2, patience=0): one ConfigError naming the config node, not a traceback."""
    try:
        yield
    except (InstantiationException, ValueError, TypeError) as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if reason.startswith(f"{key}."):
            raise ConfigError(reason) from None  # it names its key already
        raise ConfigError(f"{key} ({choice}): {reason}; check the values of {key}.*") from None


def build_run(
    cfg: DictConfig,
    run_dir: Path,
    hparams: dict[str, Any],
    log: logging.Logger | None = None,
) -> RunState:
    """`log`: the run's own logger (`RunDirectory.log`); without one, the package's."""
    log = log or logging.getLogger("fmnist")
    threads = configure(cfg.runtime)
    device = pick_device(cfg.device)
    bf16, bf16_why = decide_bf16(cfg.runtime.bf16, device)
    seed_everything(cfg.seed)
    data = build_data(
        cfg.data, cfg.batch_size, cfg.shuffle, cfg.seed, device, cfg.runtime.channels_last
    )
    spec = model_spec(cfg.model)
    model = build_model(spec)  # only this package's models (fmnist/models/)
    check_fits_the_data(model, spec, len(CLASSES))
    if hasattr(model, "fit_to_data"):  # e.g. air_cnn's whitening: from training images only
        model.fit_to_data(data.train.sample_images(FIT_IMAGES, cfg.seed))
    model = model.to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema.decay:
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema.decay), use_buffers=True
        )
    graphs = want_graphs(cfg, device)
    with refused_as("param_groups", "by kind"):
        groups = param_groups(model, OmegaConf.to_container(cfg.param_groups), cfg.lr)
    with refused_as("optimizer", cfg.choices.optimizer):
        optimizer = instantiate(cfg.optimizer)(groups, **optimizer_options(cfg, graphs))
    if cfg.weight_decay_epochs:  # the same total decay for any run length
        if any("weight_decay" not in group for group in optimizer.param_groups):
            raise ConfigError(
                f"weight_decay_epochs={cfg.weight_decay_epochs} is invalid: "
                f"optimizer={cfg.choices.optimizer} has no weight_decay to scale"
            )
        for group in optimizer.param_groups:
            group["weight_decay"] *= cfg.weight_decay_epochs / cfg.epochs
        log.info(
            "weight decay x%.3g: set for %d epochs, this run trains %d (weight_decay_epochs)",
            cfg.weight_decay_epochs / cfg.epochs,
            cfg.weight_decay_epochs,
            cfg.epochs,
        )
    batches = min(len(data.train), cfg.limit_train_batches or len(data.train))
    scheduler = None
    if cfg.scheduler:
        with refused_as("scheduler", cfg.choices.scheduler):
            scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=cfg.epochs * batches)
    # status.json last: it records an epoch only once that epoch's results and checkpoint exist
    named = {}
    for name, node in cfg.callbacks.items():
        if node:
            with refused_as(f"callbacks.{name}", name):
                named[name] = instantiate(node)
    tracker = Tracker({**named, "status": StatusCallback()})
    hparams["params"] = count_parameters(model)
    log.info(
        "%s: %s, %d parameters, %s%s, %d threads, %d train / %d val images; %s",
        run_dir,
        hparams["model"],
        hparams["params"],
        device,
        " (CUDA graphs)" if graphs else "",
        threads,
        data.train.num_samples,
        data.val.num_samples if data.val is not None else 0,
        bf16_why,
    )
    return RunState(
        cfg=cfg,
        run_dir=run_dir,
        name=run_dir.name,
        hparams=hparams,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=data,
        device=device,
        model_config=spec,
        monitor=cfg.monitor if data.val is not None else None,
        batches_per_epoch=batches,
        tracker=tracker,
        ema=ema,
        graphs=graphs,
        bf16=bf16,
        bf16_reason=bf16_why,
        threads=threads,
        # the epoch's sums stay on the device (no sync per batch) and keep their address (graphs)
        running_loss=torch.zeros((), device=device),
        running_correct=torch.zeros((), dtype=torch.long, device=device),
        log=log,
    )


SCHEDULE_LENGTH = ("total_steps", "_schedule_phases")  # OneCycleLR's; LambdaLR's are functions


def restore(run: RunState, checkpoint: dict[str, Any]) -> None:
    """Continue exactly where the last finished epoch left off (RNG states included)."""
    if run.ema is not None:
        run.model.load_state_dict(checkpoint["train_model"])
        run.ema.module.load_state_dict(checkpoint["model"])
        run.ema.n_averaged.fill_(checkpoint["ema_updates"])
    else:
        run.model.load_state_dict(checkpoint["model"])
    load_optimizer_state(run.optimizer, checkpoint["optimizer"])
    if run.scheduler is not None and checkpoint["scheduler"] is not None:
        # the checkpoint's position, this run's length (the same, unless trained on: epochs=N)
        length = {k: v for k, v in run.scheduler.state_dict().items() if k in SCHEDULE_LENGTH}
        run.scheduler.load_state_dict({**checkpoint["scheduler"], **length})
    set_rng_state(checkpoint["rng"])
    run.tracker.load_state_dict(checkpoint.get("callbacks") or {})
    run.start_epoch = run.epoch = checkpoint["epoch"]
    run.step, run.history, run.best = checkpoint["step"], checkpoint["history"], checkpoint["best"]
    run.previous_duration = checkpoint["duration"]
    run.log.info("resuming %s after epoch %d", run.run_dir, run.start_epoch)
