"""One file a model, picked by a YAML file in conf/model/ naming its class in `_target_`.

`REGISTRY` is every `nn.Module` subclass here that takes `num_classes`, found by importing its modules:
a new model is one class here and one YAML file, no other edit. Models are built only from this
allow-list with plain-valued arguments, so a config or checkpoint from someone else can name a
model but never run other code (see README, "Run directories from others"). A model may define
`fit_to_data(images)`: the engine calls it before training with training images only.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import torch
from torch import nn

from fmnist.errors import ModelError


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
    except (TypeError, ValueError) as exc:  # an unknown argument, or a value torch refuses
        raise ModelError(f"model {target}: {str(exc).splitlines()[0]}") from exc


def check_fits_the_data(model: nn.Module, spec: dict[str, Any], classes: int) -> None:
    """One forward pass of two blank 1x28x28 images before training: model arguments that
    contradict the data (num_classes, a width of 0, too many poolings) fail here in one line."""
    kwargs = spec.get("kwargs") or {}
    if kwargs.get("num_classes", classes) != classes:
        raise ModelError(
            f"model.num_classes={kwargs['num_classes']} is invalid: Fashion-MNIST has {classes} "
            f"classes (leave it at {classes})"
        )
    described = ", ".join(f"model.{k}={v}" for k, v in kwargs.items())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            out = model(torch.zeros(2, 1, 28, 28))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise ModelError(f"{described} cannot take 28x28 images: {first}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, classes):
        raise ModelError(
            f"{described} gives outputs of shape {tuple(out.shape)[1:]}, not {classes}"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
