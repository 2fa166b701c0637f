"""A CNN built for time to accuracy on 28x28 images, after KellerJordan's airbench (CIFAR-10).

What makes it learn in few epochs, each an option:
- a frozen first layer that whitens 2x2 patches (eigenvectors of the training images' patch
  covariance, +/- each, so GELU keeps both signs), computed by `fit_to_data` from training images;
- identity (dirac) initialization of every 3x3 convolution, so the net starts near a shallow one;
- BatchNorm with fast running statistics (`bn_momentum`) and a frozen scale of 1 (biases train);
- three groups of conv-pool-BN-GELU-conv-BN-GELU (27 -> 13 -> 6 -> 3 pixels), max over the rest,
  a linear layer without bias, logits scaled down (`scale`) so training starts uncertain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Whitening(nn.Conv2d):
    """A k x k convolution from 1 channel to 2 k^2 centred, whitened channels, fit once and
    never trained: no gradient flows below the first 3x3 convolution (measured: its input
    gradient at 27x27 was the costliest part of the backward pass)."""

    def __init__(self, kernel: int, eps: float = 5e-4):
        super().__init__(1, 2 * kernel * kernel, kernel, bias=True)
        self.eps = eps
        self.requires_grad_(False)  # a fixed transform of the pixels
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """From (N, 1, H, W) training images: filters +/- V / sqrt(lambda + eps) of the patch
        covariance's eigenvectors V and eigenvalues lambda; biases that centre the patches."""
        k = self.kernel_size[0]
        patches = F.unfold(images.float(), k).transpose(1, 2).reshape(-1, k * k).double()
        mean = patches.mean(0)
        patches = patches - mean
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors / (eigenvalues + self.eps).sqrt()).T  # k^2 x k^2
        weight = torch.cat([filters, -filters])
        self.weight.copy_(weight.reshape(2 * k * k, 1, k, k).to(self.weight))
        self.bias.copy_((-weight @ mean).to(self.bias))


def _norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    norm.weight.requires_grad_(False)  # scale fixed at 1: measured no loss in airbench
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int, momentum: float):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            _norm(cout, momentum),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm(cout, momentum),
            nn.GELU(),
        )


class AirCNN(nn.Module):
    def __init__(
        self,
        width1: int = 32,
        width2: int = 64,
        width3: int = 128,
        whiten_kernel: int = 2,
        bn_momentum: float = 0.4,
        scale: float = 1 / 9,
        dirac: bool = True,
        num_classes: int = 10,
    ):
        super().__init__()
        if not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum={bn_momentum} must be in (0, 1]")
        self.whiten = Whitening(whiten_kernel)
        widths = (2 * whiten_kernel**2, width1, width2, width3)
        self.groups = nn.Sequential(
            *(
                ConvGroup(cin, cout, bn_momentum)
                for cin, cout in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.head = nn.Linear(width3, num_classes, bias=False)
        self.scale = scale
        if dirac:
            for conv in self.modules():
                if type(conv) is nn.Conv2d:  # not the whitening layer
                    w = conv.weight.data
                    nn.init.dirac_(w[: w.size(1)])  # identity on the first cin output channels

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Before training: whitening from (N, 1, 28, 28) training images in [0, 1]."""
        self.whiten.fit(images.to(self.whiten.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(torch.amax(x, dim=(2, 3))) * self.scale
