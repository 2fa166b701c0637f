"""Range checks on a composed config that the schema's types cannot express (`lr=0`,
`budget_min=-1`, a `budget_models` entry naming a setting the model lacks), each a one-line
`ConfigError` that names the key; run before torch is imported."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist.config import Loader, cpu_cores
from fmnist.errors import ConfigError
from fmnist.metrics import OBJECTIVES

MAX_BUDGET_MIN = 7 * 24 * 60  # budget_min at most a week: a longer run is sized in epochs

DEVICES = ("auto", "cpu", "cuda", "mps")


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: {rule}")


def validate(cfg: DictConfig) -> None:
    """Range checks that the schema's types cannot express; a value that cannot be read as its
    type (an interpolation to another: `eval_every=${lr}`) is one line too."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        _check_ranges(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


def settle_models(cfg: DictConfig, overrides: list[str], log: logging.Logger) -> None:
    """A model chosen on the command line (`model=...`), or a setting that `budget_models`
    changes (`model.width1=24`), is what trains: `budget_models` is not used, in one line (a
    preset's wider model must not replace it). Other settings (`model.bn_momentum`) keep it."""
    if cfg.budget_min is None or not cfg.budget_models:
        return
    changed = {f"model.{name}" for entry in cfg.budget_models for name in entry.model}
    keys = [str(o).split("=", 1)[0].lstrip("+~") for o in overrides]
    mine = [k for k in keys if k == "model" or k in changed]
    if mine:
        log.info("%s given: budget_models is not used (the model as given)", ", ".join(mine))
        with read_write(cfg), open_dict(cfg):
            cfg.budget_models = None


def same_kind(value: Any, current: Any) -> bool:
    """Whether `value` may replace a model setting that is now `current` (None: not a setting)."""
    plain = (int, float, str, bool)
    if not isinstance(value, plain) or not isinstance(current, plain):
        return False
    if isinstance(value, bool) != isinstance(current, bool):
        return False
    return type(value) is type(current) or isinstance(current, float) and type(value) is int


def _check_ranges(cfg: DictConfig) -> None:
    _check(cfg.lr > 0, "lr", cfg.lr, "must be a number > 0, e.g. lr=0.01")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be an integer >= 1")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "must be an integer >= 1")
    budget = cfg.budget_min
    _check(
        budget is None or 0 < budget <= MAX_BUDGET_MIN,
        "budget_min",
        budget,
        f"minutes of training, a number > 0 and at most {MAX_BUDGET_MIN} (a week), e.g. "
        "budget_min=10, or null to train `epochs`",
    )
    used = cfg.budget_models if cfg.budget_min is not None else None  # else never timed
    for i, candidate in enumerate(used or []):
        name = f"budget_models[{i}]"
        _check(
            candidate.min_epochs >= 1, f"{name}.min_epochs", candidate.min_epochs, "must be >= 1"
        )
        settings = OmegaConf.to_container(candidate.model, resolve=True)
        model = OmegaConf.to_container(cfg.model, resolve=True) if cfg.model else {}
        wrong = [
            k for k, v in settings.items() if k.startswith("_") or not same_kind(v, model.get(k))
        ]
        _check(
            settings and not wrong,
            f"{name}.model",
            settings,
            f"settings of this model ({cfg.choices.get('model')}) with values of their kind "
            f"(not: {', '.join(wrong) or 'none given'})",
        )
    decay_epochs = cfg.weight_decay_epochs
    _check(
        decay_epochs is None or decay_epochs >= 1,
        "weight_decay_epochs",
        decay_epochs,
        "must be null (decays as set) or an integer >= 1",
    )
    for key in ("seed", "data.split_seed"):  # numpy's generators take 32-bit seeds only
        value = OmegaConf.select(cfg, key)
        _check(0 <= value < 2**32, key, value, "must be an integer from 0 to 4294967295")
    _check(
        0 <= cfg.label_smoothing < 1, "label_smoothing", cfg.label_smoothing, "must be in [0, 1)"
    )
    for key in ("limit_train_batches", "limit_test_batches"):
        value = cfg[key]
        _check(value is None or value >= 1, key, value, "must be null (all) or an integer >= 1")
    device = str(cfg.device)
    _check(
        device.split(":")[0] in DEVICES and (device.startswith("cuda") or ":" not in device),
        "device",
        device,
        f"allowed: {', '.join(DEVICES)} (or cuda:N)",
    )
    _check(0 <= cfg.data.val_size < 60000, "data.val_size", cfg.data.val_size, "must be 0..59999")
    _check(cfg.data.eval_batch_size >= 1, "data.eval_batch_size", cfg.data.eval_batch_size, ">= 1")
    cores = cpu_cores()
    _check(
        0 <= cfg.runtime.threads <= cores,
        "runtime.threads",
        cfg.runtime.threads,
        f"0 (auto) to {cores}, the cores this process may use (more threads only slow it down)",
    )
    bf16 = cfg.runtime.bf16
    _check(bf16 in (True, False, "auto"), "runtime.bf16", bf16, "true, false or auto")
    _check(
        cfg.monitor in OBJECTIVES,
        "monitor",
        cfg.monitor,
        f"one of {', '.join(OBJECTIVES)} (selection uses validation, never test)",
    )
    _check(cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip", cfg.grad_clip, "null or > 0")
    _check(0 <= cfg.ema.decay < 1, "ema.decay", cfg.ema.decay, "in [0, 1); 0 = off")
    _check(cfg.ema.every >= 1, "ema.every", cfg.ema.every, ">= 1")
    interval = cfg.runtime.nan_check_interval
    _check(interval >= 0, "runtime.nan_check_interval", interval, ">= 0 (0 = automatic)")
    _check(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "an integer >= 1 (1 = every epoch)")
    _check(0 <= cfg.tta_translate <= 4, "tta_translate", cfg.tta_translate, "0 (off) to 4 pixels")
    _check(
        not cfg.tta_translate or cfg.tta,
        "tta_translate",
        cfg.tta_translate,
        "needs tta=true (the translated views are those of the image and its mirror)",
    )
    for kind, group in cfg.param_groups.items():
        scale = group.lr_scale
        _check(scale is None or scale > 0, f"param_groups.{kind}.lr_scale", scale, "null or > 0")
        decay = group.weight_decay
        _check(decay is None or decay >= 0, f"param_groups.{kind}.weight_decay", decay, ">= 0")
    aug = cfg.data.augment
    _check(
        not aug.alternate_flip or aug.hflip,
        "data.augment.alternate_flip",
        True,
        "needs data.augment.hflip=true",
    )
    _check(
        not aug.alternate_flip or Loader(cfg.data.loader) is Loader.memory,
        "data.augment.alternate_flip",
        True,
        "needs data.loader=memory (it follows each image by its index)",
    )
    _check(0 <= aug.crop_padding <= 8, "data.augment.crop_padding", aug.crop_padding, "0..8")
    _check(0 <= aug.erasing <= 1, "data.augment.erasing", aug.erasing, "a probability in [0, 1]")
    for group in ("model", "optimizer"):
        node = cfg[group]
        _check(
            node is not None and "_target_" in node,
            group,
            node,
            f"choose one of the files in conf/{group}/ (e.g. {group}=...)",
        )
