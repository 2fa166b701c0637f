"""K models of one architecture computed as one (horizontal fusion, as in HFTA).

The members keep their own parameters, buffers and optimizers: `FusedModel` borrows them. Its
inputs and activations hold member k's channels in block k of the channel dimension
([N, K*C, H, W], or [N, K*F] after flattening), so convolutions become one grouped convolution,
linear layers one batched matrix multiply, and BatchNorm one BatchNorm over K*C channels (each
member keeps its own statistics). The models' own `forward` code runs unchanged on that layout;
`fusable` checks, by one forward pass, that it really computes each member's output.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class FusionError(ValueError):
    """These models cannot be computed as one (a layer or an operation that mixes members)."""


class FusedConv2d(nn.Module):
    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        first = convs[0]
        if first.padding_mode != "zeros":
            raise FusionError(f"cannot fuse Conv2d with padding_mode={first.padding_mode}")
        self.members = convs  # a plain list: the members' parameters stay theirs
        self.opts = (first.stride, first.padding, first.dilation, first.groups * len(convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([c.weight for c in self.members])
        bias = None if self.members[0].bias is None else torch.cat([c.bias for c in self.members])
        stride, padding, dilation, groups = self.opts
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class FusedLinear(nn.Module):
    """Takes [N, K*F] (member blocks) or [N*K, F] (rows interleaved, from a reshape(-1, F))."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.members = linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, f = len(self.members), self.members[0].in_features
        xs = x.reshape(-1, k, f).transpose(0, 1)  # [K, N, F]
        weight = torch.stack([m.weight for m in self.members]).transpose(1, 2)  # [K, F, O]
        if self.members[0].bias is None:
            out = torch.bmm(xs, weight)
        else:
            bias = torch.stack([m.bias for m in self.members]).unsqueeze(1)  # [K, 1, O]
            out = torch.baddbmm(bias, xs, weight)
        return out.transpose(0, 1).reshape(x.shape[0], -1)


class FusedBatchNorm(nn.Module):
    """One batch_norm over K*C channels; running statistics are read from and written back to
    the members' own buffers, so a member's state_dict is always current."""

    def __init__(self, norms: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        self.members = norms
        first = norms[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.affine, self.track = first.affine, first.track_running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, first = self.members, self.members[0]
        weight = torch.cat([m.weight for m in members]) if self.affine else None
        bias = torch.cat([m.bias for m in members]) if self.affine else None
        if not self.track:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean = torch.cat([m.running_mean for m in members])
        var = torch.cat([m.running_var for m in members])
        if not first.training:
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        counts = [m.num_batches_tracked for m in members]
        torch._foreach_add_(counts, 1)
        momentum = self.momentum
        if momentum is None:  # a cumulative average, as nn.BatchNorm does
            momentum = 1.0 / float(counts[0])
        out = F.batch_norm(x, mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            torch._foreach_copy_([m.running_mean for m in members], list(mean.chunk(len(members))))
            torch._foreach_copy_([m.running_var for m in members], list(var.chunk(len(members))))
        return out


FUSED_LEAVES: dict[type, type] = {
    nn.Conv2d: FusedConv2d,
    nn.Linear: FusedLinear,
    nn.BatchNorm1d: FusedBatchNorm,
    nn.BatchNorm2d: FusedBatchNorm,
}


def _fused_leaf(layer: type) -> type | None:
    """The fused class for a layer, or for a subclass that keeps its base's forward (air_cnn's
    Whitening is a Conv2d with frozen weights)."""
    for base in layer.__mro__:
        if base in FUSED_LEAVES:
            return FUSED_LEAVES[base] if layer.forward is base.forward else None
    return None


class FusedModel(nn.Module):
    """`members`' forward as one module: input [N, K*C, H, W], output [N, K, classes]."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len({type(m) for m in members}) != 1:
            raise FusionError("members of different model classes cannot be fused")
        self.k = len(members)
        self.members = members
        twin = copy.deepcopy(members[0])  # its forward code; every layer with state is replaced
        for name, module in list(twin.named_modules()):
            if not name or not _has_own_state(module):
                continue
            fused = _fused_leaf(type(module))
            if fused is None:
                raise FusionError(f"cannot fuse {type(module).__name__} ({name})")
            parent, _, leaf = name.rpartition(".")
            setattr(
                twin.get_submodule(parent) if parent else twin, leaf, _leaf(fused, members, name)
            )
        if _has_own_state(twin):
            raise FusionError(f"{type(twin).__name__} holds parameters outside its layers")
        self.twin = twin

    def train(self, mode: bool = True) -> FusedModel:
        for m in self.members:
            m.train(mode)
        self.twin.train(mode)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.twin(x)
        return out.reshape(x.shape[0], self.k, -1)


def _leaf(fused: type, members: list[nn.Module], name: str) -> nn.Module:
    layers = [m.get_submodule(name) for m in members]
    if len({tuple(tuple(p.shape) for p in layer.parameters()) for layer in layers}) != 1:
        raise FusionError(f"{name} differs in shape between members")
    return fused(layers)


def _has_own_state(module: nn.Module) -> bool:
    return bool(module._parameters) or any(b is not None for b in module._buffers.values())


def stack_inputs(images: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """Member k's batch [N, C, H, W] into channel block k of one [N, K*C, H, W] tensor."""
    x = torch.cat(images, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def fusable(members: list[nn.Module], channels_last: bool = False) -> str | None:
    """None if the fused forward equals each member's own (checked in eval mode on random
    images, so an operation that mixes channel blocks is caught), else why not."""
    try:
        fused = FusedModel(members)
    except FusionError as exc:
        return str(exc)
    modes = [m.training for m in members]
    try:
        fused.train(False)
        gen = torch.Generator().manual_seed(0)
        device = next(members[0].parameters()).device
        x = torch.rand(2, 1, 28, 28, generator=gen).to(device)
        xs = [x + 0.1 * k for k in range(len(members))]
        if channels_last:
            xs = [t.contiguous(memory_format=torch.channels_last) for t in xs]
        got = fused(stack_inputs(xs, channels_last)).float()
        want = torch.stack([m(t).float() for m, t in zip(members, xs, strict=True)], 1)
    except (RuntimeError, ValueError) as exc:
        return f"the fused forward fails: {str(exc).splitlines()[0]}"
    finally:
        for m, mode in zip(members, modes, strict=True):
            m.train(mode)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        return "the model's forward mixes members (its fused output differs from the members')"
    return None
