"""CIFAR-10 / CIFAR-100 from the python-pickle release, archived or extracted.

The release is a set of pickles holding dicts of numpy arrays and lists. They are read with
an unpickler that resolves only the handful of numpy names those files use, so a tampered
file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import urllib.error
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leenet.datasets.download import default_dir
from leenet.datasets.memory import ArrayData, Augment
from leenet.errors import DataError, brief

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles from Python 3 store bytes
    **{(f"{core}.multiarray", "_reconstruct"): _multiarray._reconstruct
       for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): _numeric._frombuffer
       for core in ("numpy.core", "numpy._core")},
}


@dataclass(frozen=True)
class CifarFormat:
    """File layout and constants of one CIFAR release."""

    title: str  # name in messages
    archive: str  # the release's tarball
    folder: str  # the folder inside it
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes  # key of the labels in each batch dict
    names_key: bytes  # key of the class names in the meta dict
    num_classes: int
    mean: tuple[float, ...]  # per-channel statistics of the training images in [0, 1]
    std: tuple[float, ...]
    torchvision_name: str  # the torchvision class that downloads it


CIFAR10 = CifarFormat(
    "CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    b"labels", b"label_names", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10",
)
CIFAR100 = CifarFormat(
    "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python",
    ("train",), "test", "meta",
    b"fine_labels", b"fine_label_names", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return _ALLOWED[(module, name)]


def unpickle(data: bytes, source: str) -> dict:
    """Decode one CIFAR pickle (keys stay ``bytes``) or raise :class:`DataError`."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any decoding failure means the file is not a CIFAR pickle
        raise DataError(f"{source} is not a readable CIFAR pickle ({brief(exc)}): replace it "
                        f"with the original file, or delete it and add --download") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{source} holds a {type(obj).__name__}, not a CIFAR dict: replace it "
                        f"with the original file")
    return obj


def locate(fmt: CifarFormat, path: Path) -> Path | None:
    """The archive or extracted folder that ``path`` names or contains, if any."""
    candidates = (path / fmt.folder, path, path / fmt.archive)
    if path.is_file():
        return path
    for candidate in candidates:
        if candidate.is_dir() and (candidate / fmt.meta_file).is_file():
            return candidate
        if candidate.is_file():
            return candidate
    return None


def read_members(fmt: CifarFormat, source: Path) -> dict[str, bytes]:
    """The raw bytes of every file of the release, from its folder or in one pass over its tarball."""
    names = (*fmt.train_files, fmt.test_file, fmt.meta_file)
    blobs: dict[str, bytes] = {}
    try:
        if source.is_dir():
            blobs = {n: (source / n).read_bytes() for n in names if (source / n).is_file()}
        else:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    parent, _, base = member.name.rpartition("/")
                    if base in names and Path(parent).name == fmt.folder and member.isfile():
                        blobs[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {fmt.title} from {source} ({exc}): replace it with "
                        f"{fmt.archive}, or delete it and add --download") from exc
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"{fmt.title} at {source} lacks {', '.join(missing)}: point --data-dir "
                        f"at a complete {fmt.archive} or {fmt.folder} folder, or add --download")
    return blobs


def _batch(fmt: CifarFormat, blob: bytes, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = unpickle(blob, source)
    data, labels = d.get(b"data"), d.get(fmt.label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{source} lacks {b'data'!r} or {fmt.label_key!r}: it is not a "
                        f"{fmt.title} batch; replace it with the original file")
    try:
        y = np.asarray(labels)
    except ValueError:  # ragged nesting
        y = np.asarray([], dtype=object)
    if y.dtype.kind not in "iu":  # floats would truncate; strings, None and huge ints give other dtypes
        raise DataError(f"{source} has labels that are not class numbers 0..{fmt.num_classes - 1}: "
                        f"replace it with the original file")
    y = y.astype(np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or y.shape != (data.shape[0],):
        raise DataError(f"{source} holds data {data.dtype}{data.shape} and {y.shape[0]} labels, "
                        f"expected uint8 (N, 3072) and N labels: replace it with the original file")
    if y.size and (y.min() < 0 or y.max() >= fmt.num_classes):
        raise DataError(f"{source} has labels outside 0..{fmt.num_classes - 1}: "
                        f"replace it with the original file")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def _class_names(fmt: CifarFormat, blob: bytes, source: str) -> tuple[str, ...]:
    names = unpickle(blob, source).get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes:
        raise DataError(f"{source} lacks {fmt.num_classes} {fmt.names_key!r}: "
                        f"replace it with the original file")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def download_cifar(fmt: CifarFormat, root: Path) -> None:
    """Download and extract the release into ``root`` with torchvision (checks its MD5)."""
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, fmt.torchvision_name)(root=str(root), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise DataError(f"downloading {fmt.title} into {root} failed ({exc}): check the network, "
                        f"or fetch {fmt.archive} by hand and pass --data-dir") from exc


def read_cifar(fmt: CifarFormat, data_dir: Path | None = None, download: bool = False) -> ArrayData:
    """Load a CIFAR release (50 000 train, 10 000 test, 3x32x32).

    Args:
        fmt: :data:`CIFAR10` or :data:`CIFAR100` (fine labels).
        data_dir: the archive, the folder holding it, or the extracted folder;
            ``None`` = ``~/.cache/leenet/cifar10`` (or ``cifar100``).
        download: fetch the release into ``data_dir`` when it is not there.

    Raises:
        DataError: not found (without ``download``), unreadable or corrupt.
    """
    root = Path(data_dir) if data_dir is not None else default_dir(fmt.torchvision_name.lower())
    source = locate(fmt, root)
    if source is None and download:
        download_cifar(fmt, root.parent if root.name.endswith((".tar.gz", ".tgz")) else root)
        source = locate(fmt, root)
    if source is None:
        raise DataError(f"{fmt.title} not found at {root}: pass --data-dir pointing at "
                        f"{fmt.archive}, the folder holding it, or its extracted {fmt.folder} "
                        f"folder, or add --download")
    blobs = read_members(fmt, source)
    parts = [_batch(fmt, blobs[n], f"{source}:{n}") for n in fmt.train_files]
    test_x, test_y = _batch(fmt, blobs[fmt.test_file], f"{source}:{fmt.test_file}")
    return ArrayData(
        train_x=torch.cat([x for x, _ in parts]),
        train_y=torch.cat([y for _, y in parts]),
        test_x=test_x,
        test_y=test_y,
        class_names=_class_names(fmt, blobs[fmt.meta_file], f"{source}:{fmt.meta_file}"),
        mean=fmt.mean,
        std=fmt.std,
        augment=Augment(pad=4, flip=True),
    )
