"""Fashion-MNIST from its idx files (raw or gzipped), with a strict idx parser."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from leenet.datasets.download import default_dir, fetch_url
from leenet.datasets.memory import ArrayData, Augment
from leenet.errors import DataError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # role -> file name without .gz
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN = (0.2860,)  # pixel statistics of the 60 000 training images scaled to [0, 1]
STD = (0.3530,)
UBYTE = 0x08  # idx type code of unsigned bytes, the only one Fashion-MNIST uses


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Decode an unsigned-byte idx file (magic ``00 00 08 <ndim>``, big-endian dims, data).

    Args:
        data: the whole (decompressed) file.
        source: the file's name, for messages.

    Returns:
        uint8 array with the dims in the header.

    Raises:
        DataError: wrong magic number, or data shorter or longer than the dims say.
    """
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != UBYTE or data[3] == 0:
        raise DataError(f"{source} is not an unsigned-byte idx file (bad magic number "
                        f"{data[:4].hex() or 'none'}): replace it with the original file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source} is truncated inside its header: replace it with the original file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(f"{source} is truncated or corrupt: header promises {expected} bytes for "
                        f"shape {dims}, found {len(data) - header}: replace it with the original file")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_file(path: Path) -> np.ndarray:
    """Read and parse one idx file, gunzipping it when its name ends in ``.gz``."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} ({exc}): replace it with the original file "
                        f"or delete it and add --download") from exc
    return parse_idx(data, str(path))


def locate_files(folder: Path) -> dict[str, Path]:
    """The idx files present in ``folder`` (or its torchvision ``FashionMNIST/raw``), by role."""
    found: dict[str, Path] = {}
    for base in (folder, folder / "FashionMNIST" / "raw"):
        for role, stem in FILES.items():
            for name in (stem, stem + ".gz"):
                if role not in found and (base / name).is_file():
                    found[role] = base / name
    return found


def download_fashion_mnist(folder: Path) -> None:
    """Fetch the four gzipped idx files from Zalando's mirror into ``folder``."""
    present = locate_files(folder)
    for role, stem in FILES.items():
        if role not in present:
            fetch_url(MIRROR + stem + ".gz", folder / (stem + ".gz"))


def _check(images: np.ndarray, labels: np.ndarray, split: str, folder: Path) -> None:
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST {split} files in {folder} do not match: images "
                        f"{images.shape}, labels {labels.shape}: replace them with the originals")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"Fashion-MNIST {split} labels in {folder} go up to {labels.max()}, "
                        f"expected 0..9: replace the labels file with the original")


def _read_folder(folder: Path, found: dict[str, Path]) -> ArrayData:
    arrays = {role: read_idx_file(path) for role, path in found.items()}
    _check(arrays["train_x"], arrays["train_y"], "train", folder)
    _check(arrays["test_x"], arrays["test_y"], "test", folder)
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DataError(f"{folder}: training images are {arrays['train_x'].shape[1:]} but test images "
                        f"{arrays['test_x'].shape[1:]}: the files come from different datasets; use the original four")
    tensors = {role: torch.from_numpy(a.copy()) for role, a in arrays.items()}
    return ArrayData(
        train_x=tensors["train_x"][:, None],
        train_y=tensors["train_y"].long(),
        test_x=tensors["test_x"][:, None],
        test_y=tensors["test_y"].long(),
        class_names=CLASS_NAMES,
        mean=MEAN,
        std=STD,
        augment=Augment(pad=2, flip=True),
    )


def read_fashion_mnist(data_dir: Path | None = None, download: bool = False) -> ArrayData:
    """Load Fashion-MNIST (60 000 train, 10 000 test, 1x28x28).

    Args:
        data_dir: folder holding the four idx files; ``None`` looks in
            ``/usr/share/datasets/fashion-mnist`` and then ``~/.cache/leenet/fashion-mnist``.
        download: fetch missing files into ``data_dir`` (or the cache folder).

    Raises:
        DataError: files missing (without ``download``), unreadable or corrupt.
    """
    folders = [Path(data_dir)] if data_dir is not None else [SYSTEM_DIR, default_dir("fashion-mnist")]
    for folder in folders:
        found = locate_files(folder)
        if len(found) == len(FILES):
            return _read_folder(folder, found)
    target = folders[-1]
    if download:
        download_fashion_mnist(target)
        return _read_folder(target, locate_files(target))
    found = locate_files(target)
    if found:
        missing = ", ".join(FILES[r] + "[.gz]" for r in FILES if r not in found)
        raise DataError(f"Fashion-MNIST in {target} lacks {missing}: copy the missing files "
                        f"there, or add --download")
    where = " or ".join(str(f) for f in folders)
    raise DataError(f"Fashion-MNIST not found in {where}: install the Debian package "
                    f"dataset-fashion-mnist, pass --data-dir DIR holding the idx files, "
                    f"or add --download")
