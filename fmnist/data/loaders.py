"""Batches for training and evaluation: the fast in-memory path and the article's DataLoader.

Both give the same batches: a new shuffle each epoch from a generator seeded by (seed, epoch),
the data set order when `shuffle=false`, the last partial batch kept, pixels / 255 like ToTensor.
Seeding by epoch (not by a running generator) is what lets a resumed run see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fmnist.config import Loader
from fmnist.data.augment import Augment
from fmnist.data.tensors import load_tensors
from fmnist.engine.runtime import to_device

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def split_indices(
    labels: torch.Tensor, val_size: int, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): disjoint, sorted, stratified by class, fixed by `split_seed`.

    Each class gives val_size // classes images (the remainder to the first classes), taken in
    the order of one seeded permutation, so the split never depends on the run's `seed`.
    """
    n = len(labels)
    if val_size == 0:
        return torch.arange(n), torch.arange(0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    classes = int(labels.max()) + 1
    picked = []
    for c in range(classes):
        share = val_size // classes + (1 if c < val_size % classes else 0)
        picked.append(perm[labels[perm] == c][:share])
    val = torch.cat(picked).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


class MemoryLoader:
    """Batches by indexing a uint8 tensor that lives on the training device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment = augment if augment and augment.active else None
        self.channels_last = channels_last
        self.mirrored = None  # alternating flip: the images mirrored in odd epochs (fixed by seed)
        if self.augment is not None and self.augment.alternate_flip:
            self.mirrored = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed))
            self.mirrored = self.mirrored < 0.5

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def sample_images(self, n: int, seed: int) -> torch.Tensor:
        """Up to `n` images (N, 1, 28, 28) in [0, 1], a random choice fixed by `seed`, unaugmented:
        what a model fits itself to before training (fmnist.models: `fit_to_data`)."""
        pick = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:n]
        return self.images[to_device(pick, self.images.device)].unsqueeze(1).float().div_(255)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        gen = epoch_generator(self.seed, epoch)
        n = len(self.labels)
        order = None
        if self.shuffle:  # seeded on the CPU like the DataLoader path: the same order on every
            order = to_device(torch.randperm(n, generator=gen), self.images.device)  # device
        for start in range(0, n, self.batch_size):
            if order is None:
                idx = slice(start, start + self.batch_size)
            else:
                idx = order[start : start + self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            x = x.unsqueeze(1).float().div_(255)
            if self.augment is not None:
                flip = None
                if self.mirrored is not None:  # every other epoch each image is mirrored
                    flip = self.mirrored[idx.cpu() if order is not None else idx] ^ (epoch % 2 == 0)
                x = self.augment(x, gen, flip)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class TorchvisionLoader:
    """The article's path: FashionMNIST + ToTensor (a PIL image per sample) + DataLoader."""

    def __init__(
        self,
        root: str,
        train: bool,
        indices: torch.Tensor | None,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        num_workers: int = 0,
    ):
        from torchvision import datasets, transforms

        from fmnist.data.sources import verify_raw

        verify_raw(root)  # torchvision reads the raw files itself: check every byte first
        dataset = datasets.FashionMNIST(root, train=train, transform=transforms.ToTensor())
        if indices is not None and len(indices) != len(dataset):
            dataset = torch.utils.data.Subset(dataset, indices.tolist())
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.augment = augment if augment and augment.active else None
        self.device, self.channels_last, self.num_workers = device, channels_last, num_workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def sample_images(self, n: int, seed: int) -> torch.Tensor:
        """As `MemoryLoader.sample_images`, read through torchvision."""
        pick = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(seed))[:n]
        return torch.stack([self.dataset[int(i)][0] for i in pick]).to(self.device)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        gen = epoch_generator(self.seed, epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=gen,
            num_workers=self.num_workers,
        )
        for x, y in loader:
            x, y = to_device(x, self.device), to_device(y, self.device)
            if self.augment is not None:
                x = self.augment(x, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


@dataclass
class FashionMNISTData:
    train: MemoryLoader | TorchvisionLoader
    val: MemoryLoader | TorchvisionLoader | None
    test: MemoryLoader | TorchvisionLoader


def build_data(
    cfg: DictConfig,
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    channels_last: bool,
) -> FashionMNISTData:
    """The three loaders a run needs (validation only when `val_size` > 0), from `data`."""
    tensors = load_tensors(cfg.root, download=cfg.download)  # checks files, builds the cache
    train_idx, val_idx = split_indices(tensors["train_labels"], cfg.val_size, cfg.split_seed)
    article_path = Loader(cfg.loader) is Loader.torchvision

    def make(
        train: bool, idx: torch.Tensor | None, bs: int, shuf: bool, aug: Augment | None = None
    ):
        opts = {"device": device, "channels_last": channels_last}
        if article_path:
            return TorchvisionLoader(cfg.root, train, idx, bs, shuf, seed, aug, **opts)
        split = "train" if train else "test"
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if idx is not None:
            images, labels = images[idx], labels[idx]
        return MemoryLoader(images, labels, bs, shuf, seed, aug, **opts)

    return FashionMNISTData(
        train=make(
            True, train_idx if cfg.val_size else None, batch_size, shuffle, Augment(**cfg.augment)
        ),
        val=make(True, val_idx, cfg.eval_batch_size, False) if cfg.val_size else None,
        test=make(False, None, cfg.eval_batch_size, False),
    )
