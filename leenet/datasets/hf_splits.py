"""Loaded Hugging Face splits to LEENet data: the image and label columns, decoded or kept encoded.

What is read: the ``Image`` column (``image`` or ``img`` first), the ``ClassLabel`` column
(``label`` first, then ``fine_*``, so CIFAR-100 gives its 100 fine classes) with its class
names, the ``train`` split and the ``test`` split (else ``validation``). Calibration samples are
held out of train later, by :func:`leenet.data.split_calibration`.

How images are held (measured on one core of this project's CI machine):

* All images square and of one size, and their decoded uint8 pixels within
  :data:`MAX_IN_MEMORY_BYTES`: an in-memory :class:`ArrayData` at the native size, grey kept as
  one channel, with the training images' own mean and std, and CIFAR's augmentation (pad-crop by
  a side/8, mirror for RGB only: grey Hub datasets are mostly handwriting, which a mirror
  changes). CIFAR-10 as parquet (60 000 PNGs): read in 8 s, 180 MB of pixels held (+640 MB at
  the peak of reading), then the same fast batches as ``cifar10``.
* Any other (ImageNette: sizes vary): the encoded bytes are kept and decoded per sample like the
  folder datasets: RGB, ImageNet statistics, random-resized crop for training, resize + center
  crop to ``--image-size`` (224 by default). ImageNette's size (13 394 JPEGs of 320 x 320-500,
  490 MB): read in 7 s (headers only), 490 MB held, 3.9 ms per sample to decode (4.7 ms with
  augmentation). Decoding it once to 224 px instead would take 56 s and 2.0 GB and lose the
  random crops of the full image. Datasets whose encoded images do not fit in memory
  (ImageNet-1k) are out of reach of this reader.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from leenet.datasets.folder import FolderData
from leenet.datasets.memory import ArrayData, Augment
from leenet.errors import DataError, brief

TEST_SPLITS = ("test", "validation")  # the first one present is the test split
IMAGE_COLUMNS = ("image", "img")  # preferred among several Image columns
MAX_IN_MEMORY_BYTES = 2 * 2**30  # decoded uint8 pixels of all splits held in memory at most
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # PIL modes kept as one channel


@dataclass
class _Split:
    """One split's encoded images and labels, checked but not decoded."""

    name: str  # "train", "test" or "validation"
    images: list[bytes]  # PNG, JPEG, ... as stored
    labels: np.ndarray  # int64 (N,)
    sizes: set[tuple[int, int]]  # (width, height) of the images
    modes: set[str]  # PIL modes of the images


def read_splits(hf: ModuleType, source: str, splits: Mapping[str, Any]) -> ArrayData | FolderData:
    """Train and test images and labels of loaded splits.

    Args:
        hf: the ``datasets`` module.
        source: the dataset's name in messages, e.g. ``hf:uoft-cs/cifar10``.
        splits: split name -> ``datasets.Dataset`` or ``IterableDataset`` (streamed).

    Raises:
        DataError: a missing split or column, an empty split, a row without a label or an image.
    """
    have = ", ".join(splits) or "none"
    if "train" not in splits:
        raise DataError(f"{source} has no train split (splits: {have}): rename the training split to "
                        f"train and save it with DatasetDict.save_to_disk")
    test_name = next((s for s in TEST_SPLITS if s in splits), None)
    if test_name is None:
        raise DataError(f"{source} has no test or validation split (splits: {have}): split one off with "
                        f"Dataset.train_test_split and save both with DatasetDict.save_to_disk")
    image_col, label_col, class_names = _columns(source, splits["train"].features)
    if _columns(source, splits[test_name].features) != (image_col, label_col, class_names):
        raise DataError(f"{source}: the {test_name} split's image or label column or classes differ from "
                        f"train's ({image_col!r}, {label_col!r}): give both splits the same features")
    train, test = (_read_split(hf, source, s, splits[s], image_col, label_col, len(class_names))
                   for s in ("train", test_name))
    sizes, modes = train.sizes | test.sizes, train.modes | test.modes
    side = next(iter(sizes))[0]
    channels = 1 if modes <= GREY_MODES else 3
    count = len(train.images) + len(test.images)
    if sizes == {(side, side)} and count * channels * side * side <= MAX_IN_MEMORY_BYTES:
        return _arrays(source, train, test, class_names, side, channels)
    return FolderData(train=list(zip(train.images, train.labels.tolist())),
                      test=list(zip(test.images, test.labels.tolist())), class_names=class_names)


def _columns(source: str, features: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """(image column, label column, class names) found by the columns' feature types."""
    kinds = {col: type(f).__name__ for col, f in (features or {}).items()}  # None: a stream without schema
    have = ", ".join(f"{c}: {k}" for c, k in kinds.items()) or "none"
    images = sorted((c for c, k in kinds.items() if k == "Image"),
                    key=lambda c: IMAGE_COLUMNS.index(c) if c in IMAGE_COLUMNS else len(IMAGE_COLUMNS))
    if not images:
        raise DataError(f"{source} has no Image column (columns: {have}): LEENet needs one column of "
                        f"Image feature and one of ClassLabel feature")
    labels = sorted((c for c, k in kinds.items() if k == "ClassLabel"),
                    key=lambda c: (c != "label", not c.startswith("fine")))
    if not labels:
        raise DataError(f"{source} has no ClassLabel column (columns: {have}): cast the label column with "
                        f"Dataset.cast_column(NAME, ClassLabel(names=[...])) and save it with save_to_disk")
    return images[0], labels[0], tuple(str(n) for n in features[labels[0]].names)


def _read_split(hf: ModuleType, source: str, split: str, ds: Any, image_col: str, label_col: str,
                num_classes: int) -> _Split:
    """Every row's encoded image and label, each image's header checked (pixels not decoded)."""
    rows = ds.select_columns([image_col, label_col]).cast_column(image_col, hf.Image(decode=False))
    out = _Split(name=split, images=[], labels=np.empty(0, dtype=np.int64), sizes=set(), modes=set())
    labels: list[int] = []
    for batch in _batches(source, split, rows):
        labels += [-1 if v is None else v for v in batch[label_col]]
        for cell in batch[image_col]:
            row = len(out.images)
            data = _cell_bytes(source, split, row, image_col, cell)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    out.sizes.add(img.size)
                    out.modes.add(img.mode)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError(f"{source}: row {row} of the {split} split holds {len(data)} bytes in column "
                                f"{image_col!r} that are not an image ({brief(exc, 80)}): fix or drop that row") from exc
            out.images.append(data)
    if not out.images:
        raise DataError(f"{source}: the {split} split has no rows: give it images, or use another dataset")
    out.labels = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((out.labels < 0) | (out.labels >= num_classes))
    if bad.size:
        raise DataError(f"{source}: row {bad[0]} of the {split} split has label {out.labels[bad[0]]}, outside "
                        f"0..{num_classes - 1} (-1: unlabeled): use a split whose rows all have labels")
    return out


def _batches(source: str, split: str, rows: Any) -> Iterator[dict[str, list]]:
    """``rows`` in batches of 1024, one at a time (a streamed split is never held twice)."""
    batches = iter(rows.iter(batch_size=1024))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # parquet / arrow reading errors of damaged files
            raise DataError(f"cannot read the {split} split of {source} ({brief(exc)}): "
                            f"replace its files with the originals") from exc
        yield batch


def _cell_bytes(source: str, split: str, row: int, image_col: str, cell: dict | None) -> bytes:
    """The encoded image of one ``Image(decode=False)`` cell: its bytes, or the file its path names."""
    if cell is not None and cell.get("bytes") is not None:
        return cell["bytes"]
    path = cell.get("path") if cell is not None else None
    if path and os.path.isfile(path):
        return Path(path).read_bytes()
    what = f"names the missing file {path}" if path else "is empty"
    raise DataError(f"{source}: row {row} of the {split} split's {image_col!r} {what}: restore the image "
                    f"or drop that row")


def _arrays(source: str, train: _Split, test: _Split, class_names: tuple[str, ...],
            side: int, channels: int) -> ArrayData:
    train_x = _decode(source, train, side, channels)
    mean, std = _channel_stats(train_x)
    return ArrayData(
        train_x=train_x,
        train_y=torch.from_numpy(train.labels),
        test_x=_decode(source, test, side, channels),
        test_y=torch.from_numpy(test.labels),
        class_names=class_names,
        mean=mean,
        std=std,
        # CIFAR's recipe (4 px at 32); no mirror for grey images, mostly handwriting (MNIST, EMNIST, KMNIST)
        augment=Augment(pad=max(1, side // 8), flip=channels == 3),
    )


def _decode(source: str, split: _Split, side: int, channels: int) -> torch.Tensor:
    """uint8 ``(N, C, side, side)`` pixels of a split's images, grey as ``L`` and colour as ``RGB``."""
    out = np.empty((len(split.images), channels, side, side), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for row, data in enumerate(split.images):
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert(mode))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{source}: row {row} of the {split.name} split is a damaged image "
                            f"({brief(exc, 80)}): fix or drop that row") from exc
        out[row] = pixels.reshape(side, side, channels).transpose(2, 0, 1)
    return torch.from_numpy(out)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)`` in [0, 1] units, in float64 chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(1024):
        values = chunk.double().div_(255.0)
        total += values.sum((0, 2, 3))
        squares += values.square().sum((0, 2, 3))
    n = x.numel() / x.shape[1]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
