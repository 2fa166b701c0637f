"""A run from its config: threads, device, data, model, optimizer, schedule, callbacks; restore."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fmnist.callbacks.base import Tracker
from fmnist.callbacks.status import StatusCallback
from fmnist.data import build_data
from fmnist.engine.graphs import load_optimizer_state, optimizer_options, want_graphs
from fmnist.engine.state import RunState, set_rng_state
from fmnist.models import build_model, count_parameters, model_spec
from fmnist.runtime import configure, decide_bf16, pick_device, seed_everything

log = logging.getLogger("fmnist")


def build_run(cfg: DictConfig, run_dir: Path, hparams: dict[str, Any]) -> RunState:
    threads = configure(cfg.runtime)
    device = pick_device(cfg.device)
    bf16, bf16_why = decide_bf16(cfg.runtime.bf16, device)
    seed_everything(cfg.seed)
    data = build_data(
        cfg.data, cfg.batch_size, cfg.shuffle, cfg.seed, device, cfg.runtime.channels_last
    )
    spec = model_spec(cfg.model)
    model = build_model(spec).to(device)  # only this package's models (fmnist/models/)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema.decay:
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema.decay), use_buffers=True
        )
    graphs = want_graphs(cfg, device)
    optimizer = instantiate(cfg.optimizer)(model.parameters(), **optimizer_options(cfg, graphs))
    batches = min(len(data.train), cfg.limit_train_batches or len(data.train))
    scheduler = (
        instantiate(cfg.scheduler)(optimizer, total_steps=cfg.epochs * batches)
        if cfg.scheduler
        else None
    )
    # status.json last: it records an epoch only once that epoch's results and checkpoint exist
    named = {name: instantiate(c) for name, c in cfg.callbacks.items() if c}
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
    )


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
        run.scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    run.tracker.load_state_dict(checkpoint.get("callbacks") or {})
    run.start_epoch = run.epoch = checkpoint["epoch"]
    run.step, run.history, run.best = checkpoint["step"], checkpoint["history"], checkpoint["best"]
    run.previous_duration = checkpoint["duration"]
    log.info("resuming %s after epoch %d", run.run_dir, run.start_epoch)
