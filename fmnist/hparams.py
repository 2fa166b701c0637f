"""A run's hyperparameters as one flat dict of plain values (results rows, TensorBoard, compare).

Which keys tell runs apart is defined here once: `NOT_IDENTITY` for "is this directory the same
run" (resume), `DERIVED` for values computed from the config. Which overrides are left out of a
sweep job's directory name is Hydra's `exclude_keys` (conf/hydra/default.yaml); sweeping one of
those is refused before any job starts (fmnist/sweep.py).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

TOP_LEVEL = (
    "lr",
    "batch_size",
    "shuffle",
    "epochs",
    "seed",
    "label_smoothing",
    "grad_clip",
    "limit_train_batches",
    "limit_test_batches",
)
GROUPS = ("model", "optimizer", "scheduler")
DERIVED = frozenset({"params"})  # computed from the model: shown, never used to tell runs apart
NOT_IDENTITY = frozenset({"epochs"}) | DERIVED  # a finished run may be trained further


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Top-level values, the chosen group files (`model=bn_cnn`) and their settings, data options."""
    plain = {  # the hydra node (present when composed with return_hydra_config) is not ours
        k: OmegaConf.to_container(v, resolve=True, enum_to_str=True)
        if OmegaConf.is_config(v)
        else v
        for k, v in cfg.items()
        if k != "hydra"
    }
    out: dict[str, Any] = {k: plain[k] for k in TOP_LEVEL if plain.get(k) is not None}
    for group in GROUPS:
        out[group] = str(plain["choices"][group])
        for key, value in (plain.get(group) or {}).items():
            if not key.startswith("_") and not (key == "lr" and value == plain["lr"]):
                out[f"{group}.{key}"] = value
    data = plain["data"]
    out["data.loader"] = data["loader"]
    out["data.val_size"] = data["val_size"]
    if data["val_size"]:
        out["data.split_seed"] = data["split_seed"]
    for key, value in data["augment"].items():
        if value:
            out[f"data.augment.{key}"] = value
    if (plain.get("ema") or {}).get("decay"):
        out["ema.decay"] = plain["ema"]["decay"]
    if plain.get("tta"):
        out["tta"] = True
        if plain.get("tta_translate"):
            out["tta_translate"] = plain["tta_translate"]
    if plain.get("eval_every", 1) != 1:  # which epochs can be selected
        out["eval_every"] = plain["eval_every"]
    if plain.get("param_groups"):  # only the settings given
        for kind, group in plain["param_groups"].items():
            for key, value in (group or {}).items():
                if value is not None:
                    out[f"param_groups.{kind}.{key}"] = value
    if (plain.get("trial") or {}).get("number") is not None:  # an Optuna search's trial
        out["trial"] = plain["trial"]["number"]
    return out


def identity(hparams: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hparams.items() if k not in NOT_IDENTITY}
