"""Datasets: a registry of loaders, a seeded calibration split, and fast batch loaders.

Every dataset comes back as three splits::

    splits = load_dataset("cifar10", data_dir="~/data")
    splits.train   # backbone and heads
    splits.calib   # held out from the training data: gates, thresholds, budgets
    splits.test    # the official test split: every reported number

The in-memory datasets (``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``) keep uint8
images and normalize, augment and resize whole batches at once in :func:`make_loader`; the
folder datasets (``imagenette``, ``folder``) read images lazily with torchvision transforms.
Hugging Face datasets (``hf:NAME[:CONFIG]``, ``hf-local:DIR[:CONFIG]``, see
:mod:`leenet.datasets.hf`) become one or the other: small images of one size in memory, the rest lazily.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from leenet.catalog import DATASET_INFO, find_dataset
from leenet.datasets.cifar import CIFAR10, CIFAR100, read_cifar
from leenet.datasets.digits import read_digits
from leenet.datasets.folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderData,
    FolderImages,
    ImageFolderDataset,
    read_folder,
    read_imagenette,
)
from leenet.datasets.hf import read_hub, read_local
from leenet.datasets.idx import read_fashion_mnist
from leenet.datasets.memory import ArrayData, IndexBatches, TensorBatchLoader, TensorImageDataset
from leenet.errors import DataError

__all__ = ["DATASETS", "DatasetEntry", "DatasetSpec", "ImageFolderDataset", "Splits",
           "TensorImageDataset", "dataset_names", "load_dataset", "make_loader", "split_calibration", "stored_images"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about the tensors a dataset yields."""

    name: str  # registry name, e.g. "fashion-mnist"
    num_classes: int
    in_channels: int  # channels of the tensors the loader yields
    image_size: int  # H == W of the tensors the loader yields
    mean: tuple[float, ...]  # normalization applied, per channel
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Specs come back from checkpoints with lists where tuples were: store tuples.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(f"dataset spec {self.name!r}: mean {self.mean} and std {self.std} "
                            f"need one value per channel ({self.in_channels})")
        if len(self.class_names) != self.num_classes:
            raise DataError(f"dataset spec {self.name!r}: {len(self.class_names)} class names "
                            f"for {self.num_classes} classes")


@dataclass
class Splits:
    """The three splits of a dataset and the spec they share."""

    spec: DatasetSpec
    train: Dataset  # for backbone + heads
    calib: Dataset  # held out from the training data, for gates/thresholds/budgets
    test: Dataset  # the official test split, only for reported numbers


Reader = Callable[[Path | None, bool], ArrayData | FolderData]  # (data_dir, download) -> data
FormReader = Callable[[str, Path | None, bool], ArrayData | FolderData]  # (rest of the name, data_dir, download)


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset, or one form of dataset names (``hf:NAME[:CONFIG]``): its
    :class:`~leenet.catalog.DatasetInfo` and its reader."""

    description: str  # one line for ``--help`` and listings
    read: Reader | FormReader  # a FormReader when ``prefix`` is set, else a Reader
    default_image_size: int | None  # None = the native size of the stored images
    prefix: str | None = None  # names starting with it are this form's, e.g. "hf:"; None = one dataset


_READERS: dict[str, Reader | FormReader] = {
    "digits": read_digits,
    "fashion-mnist": read_fashion_mnist,
    "cifar10": partial(read_cifar, CIFAR10),
    "cifar100": partial(read_cifar, CIFAR100),
    "imagenette": read_imagenette,
    "folder": read_folder,
    "hf:NAME[:CONFIG]": read_hub,
    "hf-local:DIR[:CONFIG]": read_local,
}
DATASETS: dict[str, DatasetEntry] = {  # the catalog's order; a dataset without a reader fails here, at import
    name: DatasetEntry(info.description, _READERS[name], info.default_image_size, info.prefix)
    for name, info in DATASET_INFO.items()
}


def dataset_names() -> list[str]:
    """The registered dataset names and name forms (``hf:NAME[:CONFIG]``, ``hf-local:DIR[:CONFIG]``)."""
    return list(DATASETS)


def _lookup(name: str) -> tuple[DatasetEntry, Reader]:
    """The entry that ``name`` belongs to and its reader, with a form's name part bound."""
    entry = DATASETS[find_dataset(name)]
    return entry, entry.read if entry.prefix is None else partial(entry.read, name[len(entry.prefix):])


def _calib_count(calib_size: int | float, n: int) -> int:
    if isinstance(calib_size, bool) or not isinstance(calib_size, numbers.Real):
        raise DataError(f"calib_size (--calib-size) {calib_size!r} must be a sample count or a fraction in (0, 1)")
    if isinstance(calib_size, numbers.Integral):
        count = int(calib_size)
    elif 0 < calib_size < 1:
        count = round(float(calib_size) * n)
    else:
        raise DataError(f"calib_size (--calib-size) {calib_size} must be a fraction in (0, 1) "
                        f"or a whole number of samples in 1..{n - 1}")
    if n < 3:
        raise DataError(f"the training data has {n} sample(s): at least 3 are needed (2 to train on, "
                        f"1 to calibrate); use a larger dataset")
    if not 1 <= count <= n - 2:
        raise DataError(f"calib_size (--calib-size) {calib_size} holds out {count} of the {n} training samples: "
                        f"choose 1..{n - 2} samples or a fraction that leaves at least 2 to train on")
    return count


def split_calibration(labels: Tensor, calib_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded split of training indices into (train, calib), stratified when possible.

    Args:
        labels: int64 ``(N,)`` training labels.
        calib_size: samples held out (int) or their fraction in ``(0, 1)`` (float).
        seed: fixes which samples are held out.

    Returns:
        Sorted, disjoint int64 index tensors covering ``0..N-1``.
    """
    from sklearn.model_selection import train_test_split  # scikit-learn (1-2 s to import) for this split alone

    n = len(labels)
    count = _calib_count(calib_size, n)
    idx = np.arange(n)
    try:
        train_idx, calib_idx = train_test_split(idx, test_size=count, random_state=seed,
                                                stratify=np.asarray(labels))
    except ValueError:  # a class with one sample, or fewer held-out samples than classes
        train_idx, calib_idx = train_test_split(idx, test_size=count, random_state=seed)
    return torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(calib_idx))


def _stats(name: str, what: str, given: Sequence[float] | None, default: Sequence[float],
           channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (default if given is None else given))
    if len(values) != channels:
        raise DataError(f"{what}={values} has {len(values)} values but {name} yields {channels}-channel "
                        f"images: give {channels} value{'s' if channels > 1 else ''}")
    if what == "std" and min(values) <= 0:
        raise DataError(f"std={values} must be positive: give per-channel standard deviations")
    return values


def _image_size(image_size: int | None, default: int) -> int:
    if image_size is None:
        return default
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise DataError(f"image_size={image_size!r} must be a positive whole number of pixels")
    return int(image_size)


def _with_channels(name: str, raw: ArrayData, channels: int | None) -> ArrayData:
    """``raw`` with ``channels`` channels: grey repeated to RGB, or a DataError that names the fix."""
    have = raw.train_x.shape[1]
    if channels is None or channels == have:
        return raw
    if have != 1:
        raise DataError(f"{name} has {have}-channel images but the backbone's weights expect {channels}: "
                        f"use weights trained on {have}-channel images, or none")
    # expand() is a view: the repeated copy is made per batch (or per subset), never for the source
    rgb = {k: getattr(raw, k).expand(-1, channels, -1, -1) for k in ("train_x", "test_x")}
    return replace(raw, **rgb, mean=tuple(raw.mean) * channels, std=tuple(raw.std) * channels)


def _array_splits(name: str, raw: ArrayData, calib_size: int | float, seed: int,
                  image_size: int | None, mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> Splits:
    if len(raw.train_y) == 0 or len(raw.test_y) == 0:
        raise DataError(f"{name} has an empty train or test split: replace its files with the originals")
    channels = raw.train_x.shape[1]
    size = _image_size(image_size, raw.train_x.shape[-1])
    spec = DatasetSpec(name=name, num_classes=len(raw.class_names), in_channels=channels,
                       image_size=size, mean=_stats(name, "mean", mean, raw.mean, channels),
                       std=_stats(name, "std", std, raw.std, channels), class_names=raw.class_names)
    kwargs = dict(mean=spec.mean, std=spec.std, image_size=size, augment=raw.augment,
                  value_max=raw.value_max)
    full = TensorImageDataset(raw.train_x, raw.train_y, **kwargs)
    train_idx, calib_idx = split_calibration(full.labels, calib_size, seed)
    test = TensorImageDataset(raw.test_x, raw.test_y, **kwargs)
    return Splits(spec=spec, train=full.subset(train_idx), calib=full.subset(calib_idx), test=test)


def _folder_splits(name: str, raw: FolderData, calib_size: int | float, seed: int,
                   image_size: int, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> Splits:
    spec = DatasetSpec(name=name, num_classes=len(raw.class_names), in_channels=3,
                       image_size=image_size, mean=_stats(name, "mean", mean, IMAGENET_MEAN, 3),
                       std=_stats(name, "std", std, IMAGENET_STD, 3), class_names=raw.class_names)
    full = ImageFolderDataset(raw.train, image_size=image_size, mean=spec.mean, std=spec.std)
    train_idx, calib_idx = split_calibration(full.labels, calib_size, seed)
    test = ImageFolderDataset(raw.test, image_size=image_size, mean=spec.mean, std=spec.std)
    return Splits(spec=spec, train=full.subset(train_idx), calib=full.subset(calib_idx), test=test)


def load_dataset(name: str, *, data_dir: str | Path | None = None, download: bool = False,
                 calib_size: int | float = 0.2, seed: int = 0, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 channels: int | None = None) -> Splits:
    """Load a registered dataset as train / calib / test splits.

    Args:
        name: one of :func:`dataset_names`, ``hf:NAME[:CONFIG]`` (e.g. ``hf:uoft-cs/cifar10``)
            or ``hf-local:DIR[:CONFIG]``.
        data_dir: where the files are (see each reader; ``None`` = the dataset's default place;
            for ``hf:`` the Hugging Face cache folder).
        download: fetch the files when they are missing (``fashion-mnist``, ``cifar*``,
            ``imagenette``, ``hf:``; without it ``hf:`` never goes online).
        calib_size: training samples held out for calibration: a count (int) or a
            fraction in ``(0, 1)`` (float). Stratified by class when possible.
        seed: fixes which samples are held out (never the test split).
        image_size: side of the yielded images; ``None`` = native size (8, 28, 32) for the
            in-memory datasets and 224 for ``imagenette``, ``folder`` and the Hugging Face
            datasets read lazily.
        mean: per-channel normalization mean; ``None`` = the dataset's own statistics
            (ImageNet's for the folder datasets). Pass ImageNet's for pretrained backbones.
        std: per-channel normalization standard deviation, as ``mean``.
        channels: channels the model expects; ``None`` = the dataset's own. Grey images
            are repeated to 3 channels (for RGB-pretrained backbones); any other mismatch
            is a DataError.

    Raises:
        DataError: unknown name, files missing or corrupt, or a bad argument.
    """
    entry, read = _lookup(name)
    raw = read(Path(data_dir).expanduser() if data_dir is not None else None, download)
    if isinstance(raw, ArrayData):
        if raw.train_y.unique().numel() < 2:
            raise DataError(f"{name}'s training labels hold a single class: a classifier needs at least two; "
                            f"check the label file")
        raw = _with_channels(name, raw, channels)
        return _array_splits(name, raw, calib_size, seed, image_size, mean, std)
    if channels not in (None, 3):
        raise DataError(f"{name} yields RGB images but the backbone's weights expect {channels} "
                        "channels: use weights trained on RGB images, or none")
    size = _image_size(image_size, entry.default_image_size or 224)
    return _folder_splits(name, raw, calib_size, seed, size, mean, std)


def stored_images(ds: Dataset) -> tuple[object, float]:
    """A split's images as stored, un-normalized, and their full-brightness value: an in-memory
    split's uint8 tensor (N, C, H, W) (digits: 0..16, Fashion-MNIST: 0..255), or an image
    folder's files, decoded on demand and eval-cropped as the model saw them (0..255).
    What the exit gallery shows."""
    if isinstance(ds, TensorImageDataset):
        return ds.images, ds.value_max
    return FolderImages(ds), 255.0


def make_loader(ds: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                num_workers: int = 0) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches ``(x, y)`` of a dataset: ``x`` float32 ``(B, C, H, W)``, ``y`` int64 ``(B,)``.

    Args:
        ds: a split from :func:`load_dataset`, or any map-style dataset of ``(x, y)``.
        batch_size: samples per batch.
        train: shuffle (seeded, a new order on every pass) and augment; a last batch of a
            single sample is dropped. ``False``: fixed order, no augmentation, all samples.
        seed: seeds the shuffling and the in-memory augmentation. Folder datasets draw
            their transforms from torch's global RNG (seed it for exact repeats).
        num_workers: worker processes for folder and generic datasets; the in-memory
            datasets build whole batches in the main process and ignore it.

    Returns:
        An iterable with ``len()`` = number of batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive whole number")
    if isinstance(ds, TensorImageDataset):
        return TensorBatchLoader(ds, int(batch_size), train=train, seed=seed)
    if isinstance(ds, ImageFolderDataset):
        ds = ds.with_augment(train)
    generator = torch.Generator().manual_seed(seed)
    batches = IndexBatches(len(ds), int(batch_size), shuffle=train, generator=generator)
    return DataLoader(ds, batch_sampler=batches, num_workers=num_workers, generator=generator)
