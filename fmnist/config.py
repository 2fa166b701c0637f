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
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist.errors import ConfigError
from fmnist.metrics import OBJECTIVES


class Loader(str, Enum):
    memory = "memory"  # decoded uint8 tensors on the device, batches by indexing (fast)
    torchvision = "torchvision"  # the article's FashionMNIST + ToTensor + DataLoader


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop after zero padding by this many pixels; 0 = off
    hflip: bool = False  # random horizontal flip, p=0.5
    alternate_flip: bool = False  # with hflip: each image mirrored every other epoch (airbench)
    erasing: float = 0.0  # probability of random erasing per image; 0 = off


def key(
    default: Any = None,
    *,
    factory: Any = None,
    identity: bool = True,
    member: bool = False,
    named: bool = True,
) -> Any:
    """A schema field with the facts every part of the package derives from it (fmnist/hparams.py):
    `identity`: it changes what a run trains or selects, so a run directory that holds another
    value is refused (machine settings may change: a requeued job may land on another node);
    `member`: it may differ between the members of one fused group (what each run owns);
    `named`: a swept value appears in the job's directory name (otherwise sweeping it is refused,
    since its jobs would share a directory). A field without them takes its parent's."""
    meta = {"identity": identity, "member": member, "named": named}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Config groups chosen on the command line that are not schema keys and that never tell runs
# apart (a sweep preset, the search): left out of job directory names too.
UNNAMED_GROUPS = ("sweep", "hparams_search")


@dataclass
class DataConfig:
    # holds FashionMNIST/raw/; conf/data/ sets it from fmnist.paths.data_root
    root: str = key("data", identity=False, named=False)
    loader: Loader = Loader.memory
    val_size: int = 5000  # held out of the 60,000, stratified by class; 0 = the article's setup
    split_seed: int = 0  # fixes which images form the validation split, whatever `seed` is
    # test/val evaluation batch; no gradients, so large is fine
    eval_batch_size: int = key(1000, identity=False)
    download: bool = key(True, identity=False)  # allow torchvision's download / apt-get
    augment: AugmentConfig = key(factory=AugmentConfig, member=True)


@dataclass
class RuntimeConfig:
    """How this machine runs the training: never part of a run's identity."""

    threads: int = key(0, identity=False, named=False)  # torch threads; 0 = all cores
    channels_last: bool = True  # measured faster for conv nets on CPU
    flush_denormal: bool = True  # denormal floats are slow on x86
    compile: bool = False  # torch.compile: slower here for small nets, costs warm-up
    cuda_graphs: bool | None = None  # replay each step as a CUDA graph; null = on where safe
    # bf16 autocast: true, false, or auto (on only where bf16 is native and faster)
    bf16: Any = False
    nan_check_interval: int = 0  # check loss every N steps; 0 = every step on CPU, 50 on GPU
    detect_anomaly: bool = False  # autograd anomaly detection (debug=anomaly): slow, names the op
    # set by hydra/launcher=pool: {index, device, cpus} of the job's slot (recorded in provenance)
    slot: Any = key(None, identity=False, named=False)


@dataclass
class EMAConfig:
    decay: float = 0.0  # exponential moving average of the weights, e.g. 0.999; 0 = off
    every: int = 1  # update the average every N steps (cheaper on small batches)


@dataclass
class ParamGroupConfig:
    lr_scale: float | None = None  # this kind's learning rate as a multiple of lr; None = 1
    weight_decay: float | None = None  # None = the optimizer's weight_decay


@dataclass
class ParamGroupsConfig:
    """One entry per kind of parameter (fmnist/engine/param_groups.py)."""

    norm: ParamGroupConfig = field(default_factory=ParamGroupConfig)  # BatchNorm etc.
    bias: ParamGroupConfig = field(default_factory=ParamGroupConfig)  # other layers' biases
    weight: ParamGroupConfig = field(default_factory=ParamGroupConfig)  # everything else


@dataclass
class TrainConfig:
    lr: float = key(0.01, member=True)
    batch_size: int = 100
    shuffle: bool = key(True, member=True)
    epochs: int = key(5, identity=False)  # a finished run may be trained further
    # minutes of training: the run times itself and chooses epochs (and eval_every) to fit,
    # unless `epochs` is on the command line (fmnist/engine/budget.py); None = train `epochs`
    budget_min: float | None = None
    seed: int = key(0, member=True)
    device: str = key("auto", identity=False, named=False)
    label_smoothing: float = key(0.0, member=True)
    # the run length the weight decays are set for: a run of E epochs multiplies every group's
    # decay by weight_decay_epochs / E, so its weights shrink as much in total whatever E (or
    # budget_min) chooses (airbench sets decay per step for its run length); None = as set
    weight_decay_epochs: int | None = None
    # clip the gradients' global norm to this; None = off
    grad_clip: float | None = key(None, member=True)
    # the objective: best.pt, sweeps and compare (val_loss also)
    monitor: str = key("val_accuracy", member=True)
    tta: bool = False  # evaluate on the mean of each image and its mirror image
    tta_translate: int = 0  # with tta, also both views shifted by +-N pixels (multi-crop); 0 = off
    # evaluate val and test every N epochs and at the last one; 1 = each; ${epochs} (EVAL_ONCE):
    # once, after the last epoch, whatever the epochs (a budget's choice, `epochs=N`)
    eval_every: int = 1
    # cap batches per epoch (quick tests); None = all
    limit_train_batches: int | None = key(None, named=False)
    limit_test_batches: int | None = key(None, named=False)
    # a run directory to continue (see README)
    resume: str | None = key(None, identity=False, member=True, named=False)
    # the run's directory; ${hydra:runtime.output_dir} in conf/train.yaml
    output_dir: str = key("???", identity=False, member=True, named=False)
    # chosen group files (model=bn_cnn); the model's own values must match to fuse
    choices: dict[str, Any] = key(factory=dict, member=True)
    ema: EMAConfig = key(factory=EMAConfig, member=True)
    # per kind of parameter (norm, bias, weight): its own lr scale and weight decay
    param_groups: ParamGroupsConfig = key(factory=ParamGroupsConfig, member=True)
    model: Any = None
    optimizer: Any = key(None, member=True)
    scheduler: Any = key(None, member=True)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = key(factory=RuntimeConfig, identity=False)
    # what is logged and saved: never what is trained (early stopping records its stop)
    callbacks: dict[str, Any] = key(factory=dict, identity=False, member=True, named=False)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def cpu_cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


EVAL_ONCE = "${epochs}"  # eval_every's link to epochs: evaluated once, at the end


def resolve(cfg: DictConfig) -> None:
    """`OmegaConf.resolve` in place, except that `eval_every: ${epochs}` stays a link: "once,
    at the end" must still mean it after a budget or the command line changes the epochs."""
    once = evaluated_once(cfg)
    OmegaConf.resolve(cfg)
    if once:
        with read_write(cfg), open_dict(cfg):
            cfg.eval_every = EVAL_ONCE


def evaluated_once(cfg: DictConfig) -> bool:
    """Whether the run evaluates once, after its last epoch, whatever its epochs (EVAL_ONCE)."""
    if not ("eval_every" in cfg and OmegaConf.is_interpolation(cfg, "eval_every")):
        return False
    return OmegaConf.to_container(cfg, resolve=False)["eval_every"] == EVAL_ONCE


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
