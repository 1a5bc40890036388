"""In-memory image datasets: uint8 storage, batch-wise vectorized normalization and augmentation.

Backbones for the offline datasets are trained on a couple of CPU cores, so the per-sample
PIL pipeline of torchvision is replaced by a few tensor ops on the whole batch: gather one
random crop per sample from a zero-padded batch, flip a random subset with ``torch.where``,
resize with ``F.interpolate`` and normalize with broadcasting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of an in-memory dataset."""

    pad: int = 0  # random crop after zero-padding by this many pixels (0 = no crop)
    flip: bool = False  # random horizontal flip with probability 0.5


@dataclass
class ArrayData:
    """A dataset read from disk, before the calibration split and wrapping."""

    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor  # uint8 (M, C, H, W)
    test_y: Tensor  # int64 (M,)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # the dataset's own per-channel statistics, in [0, 1] units
    std: tuple[float, ...]
    augment: Augment
    value_max: float = 255.0  # stored value that maps to 1.0 (16 for sklearn digits)


def random_crop(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Crop each sample at a random offset from the batch zero-padded by ``pad`` pixels.

    Args:
        x: images ``(B, C, H, W)`` of any dtype.
        pad: padding on each side; every sample moves by up to ``±pad`` pixels.
        generator: source of the random offsets.

    Returns:
        Tensor ``(B, C, H, W)`` like ``x``.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    rows = (oy + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror a random half of the batch ``(B, C, H, W)`` left to right."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


class TensorImageDataset(Dataset):
    """uint8 images held in memory; ``ds[i]`` gives one normalized sample, no augmentation.

    Loaders should call :meth:`batch`, which does the same work for a whole batch at once
    and applies the augmentation when asked.

    Args:
        images: uint8 ``(N, C, H, W)`` with ``H == W``.
        labels: int64 ``(N,)``.
        mean: per-channel mean subtracted after scaling to ``[0, 1]``.
        std: per-channel standard deviation divided by.
        image_size: side of the tensors produced (``None`` = native ``H``).
        augment: what :meth:`batch` does with ``augment=True``.
        value_max: stored value that maps to 1.0.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | None = None,
        augment: Augment = Augment(),
        value_max: float = 255.0,
    ) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} disagree")
        self.images = images
        self.labels = labels.long()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_size = int(image_size or images.shape[-1])
        self.augment = augment
        self.value_max = float(value_max)
        self._mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        x, y = self.batch([index % len(self)])
        return x[0], int(y[0])

    def subset(self, indices: Sequence[int] | Tensor) -> TensorImageDataset:
        """A new dataset of the samples at ``indices``, with the same transforms."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(
            self.images[idx],
            self.labels[idx],
            mean=self.mean,
            std=self.std,
            image_size=self.image_size,
            augment=self.augment,
            value_max=self.value_max,
        )

    def batch(
        self,
        indices: Sequence[int] | Tensor,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Normalized (and optionally augmented, resized) samples at ``indices``.

        Returns:
            ``x`` float32 ``(B, C, S, S)`` with ``S = image_size``, ``y`` int64 ``(B,)``.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if augment and self.augment.pad > 0:
            x = random_crop(x, self.augment.pad, generator)
        if augment and self.augment.flip:
            x = random_flip(x, generator)
        x = x.float().div_(self.value_max)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                              antialias=self.image_size < x.shape[-1])
        return (x - self._mean) / self._std, self.labels[idx]


class IndexBatches:
    """Lists of sample indices: a seeded shuffle redrawn on every pass, or the fixed order.

    When shuffling, a last batch of a single sample is dropped (BatchNorm cannot train on
    it); every other batch is kept, so ``len`` is ``ceil(n / batch_size)`` or one less.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator) -> None:
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        if self.shuffle and rest == 1 and full > 0:
            return full
        return full + (rest > 0)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator)
        else:
            order = torch.arange(self.n)
        for k in range(len(self)):
            yield order[k * self.batch_size:(k + 1) * self.batch_size].tolist()


class TensorBatchLoader:
    """The fast loader of a :class:`TensorImageDataset`: one vectorized call per batch.

    Shuffling and augmentation draw from one generator seeded once, so a run is
    reproducible and every pass sees a new order and new crops.
    """

    def __init__(self, ds: TensorImageDataset, batch_size: int, *, train: bool, seed: int) -> None:
        self.ds, self.train = ds, train
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = IndexBatches(len(ds), batch_size, shuffle=train, generator=self.generator)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in self.batches:
            yield self.ds.batch(idx, augment=self.train, generator=self.generator)
