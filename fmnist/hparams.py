"""A run's hyperparameters as one flat dict of plain values (results rows, TensorBoard, compare)."""

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
    "limit_train_batches",
    "limit_test_batches",
)
# Keys that do not change what a run computes; leaving them out lets a run resume elsewhere.
NOT_IDENTITY = {"epochs", "params"}  # params: derived from the model


def group_choice(group: str, node: Any) -> str:
    """The YAML file chosen for a config group (`seed_cnn`), else the class named in _target_."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    except ValueError:  # not inside a Hydra job
        pass
    if not node or "_target_" not in node:
        return "none"
    return str(node["_target_"]).rsplit(".", 1)[-1]


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out: dict[str, Any] = {k: plain[k] for k in TOP_LEVEL if plain.get(k) is not None}
    for group in ("model", "optimizer", "scheduler"):
        node = plain.get(group) or {}
        out[group] = group_choice(group, node)
        for key, value in node.items():
            if not key.startswith("_") and not (key == "lr" and value == plain["lr"]):
                out[f"{group}.{key}"] = value
    data = plain["data"]
    out["data.loader"] = data["loader"]
    if data["val_size"]:
        out["data.val_size"] = data["val_size"]
        out["data.split_seed"] = data["split_seed"]
    for key, value in data["augment"].items():
        if value:
            out[f"data.augment.{key}"] = value
    return out


def identity(hparams: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hparams.items() if k not in NOT_IDENTITY}
