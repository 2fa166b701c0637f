"""The typed schema of `conf/train.yaml`, registered in Hydra's ConfigStore.

Wrong types (`lr=abc`) and misspelled keys fail at composition; `validate` adds the range
checks that a type cannot express and turns them into one-line `ConfigError`s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that composes but cannot be used; the message names key and allowed values."""


class Loader(str, Enum):
    memory = "memory"  # decoded uint8 tensors on the device, batches by indexing (fast)
    torchvision = "torchvision"  # the article's FashionMNIST + ToTensor + DataLoader


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop after zero padding by this many pixels; 0 = off
    hflip: bool = False  # random horizontal flip, p=0.5
    erasing: float = 0.0  # probability of random erasing per image; 0 = off


@dataclass
class DataConfig:
    root: str = "data"  # holds FashionMNIST/raw/; env FMNIST_DATA overrides (see data/*.yaml)
    loader: Loader = Loader.memory
    val_size: int = 0  # images held out of the 60,000 for validation; 0 = the article's setup
    split_seed: int = 0  # fixes which images form the validation split, whatever `seed` is
    eval_batch_size: int = 1000  # test/val evaluation batch; no gradients, so large is fine
    download: bool = True  # allow torchvision's download / apt-get when files are missing
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class RuntimeConfig:
    threads: int = 0  # torch intra-op threads; 0 = cores / concurrent sweep jobs
    channels_last: bool = True  # measured faster for conv nets on CPU
    flush_denormal: bool = True  # denormal floats are slow on x86
    compile: bool = False  # torch.compile: slower here for small nets, costs warm-up
    cuda_graphs: bool | None = None  # replay each step as a CUDA graph; null = on where safe
    bf16: bool = False  # bf16 autocast: ~2x faster bn_cnn on AVX512-BF16 CPUs; not seed_cnn
    nan_check_interval: int = 0  # check loss every N steps; 0 = every step on CPU, 50 on GPU


@dataclass
class TrainConfig:
    lr: float = 0.01
    batch_size: int = 100
    shuffle: bool = True
    epochs: int = 5
    seed: int = 0
    device: str = "auto"
    label_smoothing: float = 0.0
    limit_train_batches: int | None = None  # cap batches per epoch (quick tests); None = all
    limit_test_batches: int | None = None
    resume: str | None = None  # a run directory to continue (see README)
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)

# Unique per process, cached in the config so every job of a sweep sees the same value:
# two sweeps started in the same second get different directories.
OmegaConf.register_new_resolver("fmnist.pid", lambda: os.getpid(), use_cache=True, replace=True)

DEVICES = ("auto", "cpu", "cuda", "mps")


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: {rule}")


def validate(cfg: DictConfig) -> None:
    """Range checks that the schema's types cannot express."""
    _check(cfg.lr > 0, "lr", cfg.lr, "must be a number > 0, e.g. lr=0.01")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be an integer >= 1")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "must be an integer >= 1")
    _check(
        0 <= cfg.label_smoothing < 1, "label_smoothing", cfg.label_smoothing, "must be in [0, 1)"
    )
    for key in ("limit_train_batches", "limit_test_batches"):
        value = cfg[key]
        _check(value is None or value >= 1, key, value, "must be null (all) or an integer >= 1")
    device = str(cfg.device)
    _check(
        device.split(":")[0] in DEVICES,
        "device",
        device,
        f"allowed: {', '.join(DEVICES)} (or cuda:N)",
    )
    _check(0 <= cfg.data.val_size < 60000, "data.val_size", cfg.data.val_size, "must be 0..59999")
    _check(cfg.data.eval_batch_size >= 1, "data.eval_batch_size", cfg.data.eval_batch_size, ">= 1")
    _check(cfg.runtime.threads >= 0, "runtime.threads", cfg.runtime.threads, ">= 0 (0 = auto)")
    aug = cfg.data.augment
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
