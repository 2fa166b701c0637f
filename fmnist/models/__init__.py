"""One file a model, picked by a YAML file in conf/model/ naming its class in `_target_`.

`REGISTRY` is every `nn.Module` subclass here that takes `num_classes`, found by importing its modules:
a new model is one class here and one YAML file, no other edit. Models are built only from this
allow-list with plain-valued arguments, so a config or checkpoint from someone else can name a
model but never run other code (see README, "Run directories from others").
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn


class ModelError(ValueError):
    """A model config this package will not build; the message is one line."""


def _discover() -> dict[str, type[nn.Module]]:
    found: dict[str, type[nn.Module]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            is_model = "num_classes" in inspect.signature(cls).parameters  # not a building block
            if issubclass(cls, nn.Module) and cls.__module__ == module.__name__ and is_model:
                found[f"{cls.__module__}.{cls.__name__}"] = cls
    return found


REGISTRY = _discover()
PLAIN = (bool, int, float, str, type(None))


def model_spec(node: Any) -> dict[str, Any]:
    """{"target": "fmnist.models.x.Class", "kwargs": {...}} from a `model` config node or dict."""
    plain = dict(node)
    target = plain.pop("_target_", None)
    kwargs = {k: v for k, v in plain.items() if not str(k).startswith("_")}
    return {"target": target, "kwargs": kwargs}


def check_spec(spec: dict[str, Any]) -> None:
    """Refuse (ModelError) a spec naming anything but one of our models with plain arguments."""
    target, kwargs = spec.get("target"), spec.get("kwargs") or {}
    if target not in REGISTRY:
        raise ModelError(
            f"model {target!r} is not one of this package's models "
            f"({', '.join(sorted(REGISTRY))}); refusing to build it"
        )
    bad = [k for k, v in kwargs.items() if not isinstance(v, PLAIN)]
    if bad or not isinstance(kwargs, dict):
        raise ModelError(f"model {target} arguments must be plain values (not: {', '.join(bad)})")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The model `spec` names, if it is one of ours and its arguments are plain values."""
    check_spec(spec)
    target, kwargs = spec["target"], spec.get("kwargs") or {}
    try:
        return REGISTRY[target](**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {target}: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
