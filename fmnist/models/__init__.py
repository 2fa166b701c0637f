"""One file a model; each is picked by a YAML file in conf/model/ naming its class in `_target_`."""

from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
