"""Batch-level augmentation on float tensors (N, 1, 28, 28), driven by an explicit generator.

Working on whole batches keeps the fast in-memory path fast, and the explicit generator keeps
runs reproducible and resumable. The random numbers are drawn on the CPU, so a run augments alike
on every device; they reach a GPU by non-blocking copies (no host sync per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmnist.engine.runtime import to_device


class Augment:
    def __init__(
        self,
        crop_padding: int = 0,
        hflip: bool = False,
        erasing: float = 0.0,
        alternate_flip: bool = False,
    ):
        self.crop_padding, self.hflip, self.erasing = crop_padding, hflip, erasing
        self.alternate_flip = alternate_flip  # the loader passes each image's `flip` per epoch

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.erasing)

    def __call__(
        self, x: torch.Tensor, gen: torch.Generator, flip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`flip`: which images to mirror (alternating flip); None = each with p=0.5."""
        n, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = to_device(dy[:, None] + torch.arange(h)[None], x.device)  # n x h
            cols = to_device(dx[:, None] + torch.arange(w)[None], x.device)  # n x w
            idx = torch.arange(n, device=x.device)[:, None, None]
            x = padded[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        if self.hflip:
            if flip is None:
                flip = torch.rand(n, generator=gen) < 0.5
            flip = to_device(flip, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.erasing:
            x = self._erase(x, gen)
        return x

    def _erase(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random erasing (Zhong et al.): a rectangle of 2-33% area, aspect 0.3-3.3, set to 0."""
        n, _, h, w = x.shape
        apply = torch.rand(n, generator=gen) < self.erasing
        area = torch.empty(n).uniform_(0.02, 0.33, generator=gen) * h * w
        log_ratio = torch.empty(n).uniform_(-1.2, 1.2, generator=gen)
        ratio = log_ratio.exp()
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        y0 = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
        x0 = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
        ys, xs = torch.arange(h)[None], torch.arange(w)[None]
        in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # n x h
        in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # n x w
        mask = to_device(in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None], x.device)
        return x.masked_fill(mask[:, None], 0.0)
