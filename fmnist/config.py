"""The typed schema of `conf/train.yaml`, registered in Hydra's ConfigStore.

Wrong types (`lr=abc`) and misspelled keys fail at composition; `fmnist.validation.validate` adds the range
checks that a type cannot express and turns them into one-line `ConfigError`s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


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
class BudgetModelConfig:
    """A model `budget_min` trains instead of `model` where enough epochs of it fit the budget."""

    min_epochs: int = 1  # trained only where at least this many of its epochs fit the budget
    model: dict[str, Any] = field(default_factory=dict)  # its settings over `model`'s


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
    # with budget_min: models to train instead of `model`, preferred first; each is timed and the
    # first of which its min_epochs fit is trained, else `model` (the choice is recorded in the
    # budget, and `model.*` in the run's identity); None = `model`
    budget_models: list[BudgetModelConfig] | None = key(None, identity=False, named=False)
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
