"""What the schema's facts about each key (`fmnist.config.key`) mean for a run: its identity
(resume), what a fused group must share, what names a sweep job's directory, and its flat
hyperparameters (results rows, TensorBoard's HParams, compare). Nothing here lists keys by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist.config import UNNAMED_GROUPS, TrainConfig

DERIVED = frozenset({"params"})  # computed from the model: shown, never used to tell runs apart
GROUPS = ("model", "optimizer", "scheduler")  # group files shown with all their values
ROOT_FACTS = {"identity": True, "member": False, "named": True}


def facts(path: str) -> dict[str, bool]:
    """The facts of a dotted key: its own field's, else its nearest parent's."""
    found, node = ROOT_FACTS, TrainConfig
    for part in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if node else {}
        if part not in fields:
            break
        field = fields[part]
        found = dict(field.metadata) or found
        node = field.type if dataclasses.is_dataclass(field.type) else None
        if node is None and isinstance(field.type, str):  # postponed annotations
            node = _dataclass_named(field.type)
    return found


def _dataclass_named(name: str) -> type | None:
    import fmnist.config as config

    candidate = getattr(config, name, None)
    return candidate if dataclasses.is_dataclass(candidate) else None


def leaves(cfg: DictConfig | dict[str, Any], prefix: str | None = None) -> dict[str, Any]:
    """Every value of the (resolved) config by its dotted key; Hydra's own node left out."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if prefix is None else cfg
    prefix = prefix or ""
    out: dict[str, Any] = {}
    for key, value in plain.items():
        if not prefix and key == "hydra":
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= leaves(value, f"{path}.")
        else:
            out[path] = value
    return out


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes a run this run: a run directory holding other values is refused on resume.
    Every value as resolved, so a config resolved early (a fused group, the Python API) and one
    resolved as it is read (the command line) give the same identity."""
    return {k: v for k, v in leaves(cfg).items() if facts(k)["identity"]}


def shared(cfg: DictConfig) -> dict[str, Any]:
    """What every member of a fused group must have equal (all but what each member owns)."""
    return {k: v for k, v in leaves(cfg).items() if not facts(k)["member"]}


def named(override_key: str) -> bool:
    """Whether a swept key appears in job directory names (`fmnist.dirname`)."""
    key = override_key.lstrip("+~")
    return key.split(".")[0] not in UNNAMED_GROUPS and facts(key)["named"]


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyperparameters as one flat dict of plain values: the identity's top-level
    values, the chosen group files (`model=bn_cnn`) with their settings, and every nested
    setting that differs from the schema's default; `epochs` too."""
    values = leaves(cfg)
    defaults = leaves(OmegaConf.structured(TrainConfig))
    out: dict[str, Any] = {}
    for key, value in values.items():
        top = key.split(".")[0]
        if key != "epochs" and not facts(key)["identity"] or value is None or top == "choices":
            continue
        if top in GROUPS:  # `optimizer.lr: ${lr}` is `lr` again
            if key.split(".")[-1].startswith("_") or (key.endswith(".lr") and value == cfg.lr):
                continue
        elif "." in key and defaults.get(key) == value:
            continue
        out[key] = value
    for group in GROUPS:
        out[group] = str(values.get(f"choices.{group}"))
    return out


def job_dirname(overrides: list[str]) -> str:
    """A sweep job's directory name: its overrides as Hydra's `override_dirname` writes them
    (sorted, `key=value` joined by commas), without the keys that are not `named`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return ",".join(sorted(str(o.input_line) for o in parsed if named(o.key_or_group)))
