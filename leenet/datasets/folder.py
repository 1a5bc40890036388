"""ImageFolder trees (``root/train/<class>/*``, ``root/val/<class>/*``), loaded lazily with PIL.

Used for ImageNette, for any user folder, and for Hugging Face datasets whose images are too
large or too varied to hold decoded (their samples are the encoded bytes instead of files).
Images are converted to RGB, so these datasets always yield 3 channels.
"""

from __future__ import annotations

import copy
import io
import tarfile
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from leenet.datasets.download import default_dir, fetch_url
from leenet.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"})
TEST_DIR_NAMES = ("val", "test")  # first one present is the test split
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's pretrained weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
IMAGENETTE_DIRS = ("imagenette2-320", "imagenette2", "imagenette2-160")
IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
}
LAYOUT = "DIR/train/<class>/<image> and DIR/val/<class>/<image>"
ImageSource = Path | bytes  # an image file, or an encoded image (PNG, JPEG, ...) held in memory


@dataclass
class FolderData:
    """The image files of an ImageFolder tree, before the calibration split."""

    train: list[tuple[ImageSource, int]]  # (file or encoded image, label) pairs
    test: list[tuple[ImageSource, int]]
    class_names: tuple[str, ...]  # folder names, sorted; label i is class_names[i]


def eval_resize(image_size: int) -> int:
    """The shorter side an evaluation image is resized to before its centre ``image_size`` crop (ImageNet's 256/224)."""
    return int(image_size * 256 / 224)


def eval_geometry(image_size: int) -> list:
    """Resize the shorter side to :func:`eval_resize`, then crop the centre ``image_size`` square."""
    return [v2.Resize(eval_resize(image_size)), v2.CenterCrop(image_size)]


def build_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    *, train: bool) -> Callable[[Image.Image], Tensor]:
    """ImageNet-style transform: random resized crop + flip, or resize + center crop."""
    if train:
        geometry = [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()]
    else:
        geometry = eval_geometry(image_size)
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


def open_rgb(source: ImageSource) -> Image.Image:
    """Open an image file or encoded image as RGB; any decoding failure is a :class:`DataError`."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(source, bytes):
            raise DataError(f"cannot decode an encoded image of {len(source)} bytes ({exc}): "
                            f"replace or drop that row of the dataset") from exc
        raise DataError(f"cannot read image {source} ({exc}): replace or delete the file") from exc


class ImageFolderDataset(Dataset):
    """Images decoded on access (from disk or from encoded bytes); ``ds[i]`` uses the eval
    transform unless ``augment``.

    Args:
        samples: ``(file or encoded image, label)`` pairs.
        image_size: side of the square tensors produced.
        mean: per-channel normalization mean.
        std: per-channel normalization standard deviation.
        augment: use the training transform (see :meth:`with_augment`).
    """

    def __init__(self, samples: Sequence[tuple[ImageSource, int]], *, image_size: int,
                 mean: Sequence[float], std: Sequence[float], augment: bool = False) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.transform = build_transform(image_size, mean, std, train=augment)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        source, label = self.samples[index]
        return self.transform(open_rgb(source)), label

    @property
    def labels(self) -> Tensor:
        """int64 ``(N,)``: the label of every sample."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def subset(self, indices: Sequence[int] | Tensor) -> ImageFolderDataset:
        """A new dataset of the samples at ``indices``, with the same transform."""
        picked = [self.samples[i] for i in torch.as_tensor(indices, dtype=torch.long).tolist()]
        return ImageFolderDataset(picked, image_size=self.image_size, mean=self.mean,
                                  std=self.std, augment=self.augment)

    def with_augment(self, augment: bool) -> ImageFolderDataset:
        """The same samples with the training (``True``) or eval transform."""
        other = copy.copy(self)
        other.augment = augment
        other.transform = build_transform(self.image_size, self.mean, self.std, train=augment)
        return other


class FolderImages:
    """uint8 (K, 3, S, S) images of an :class:`ImageFolderDataset`, eval-cropped as the model saw them but
    not normalized, decoded only when indexed (the report's exit gallery reads a few dozen)."""

    def __init__(self, ds: ImageFolderDataset) -> None:
        self.ds = ds
        self.geometry = v2.Compose([v2.ToImage(), *eval_geometry(ds.image_size)])

    def __getitem__(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.geometry(open_rgb(self.ds.samples[int(i)][0])).numpy() for i in indices])


def scan_split(split_dir: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class folder names (sorted) and ``(file, label)`` pairs of one split folder."""
    classes = tuple(sorted(d.name for d in split_dir.iterdir()
                           if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"{split_dir} has no class folders: lay images out as {LAYOUT}")
    if len(classes) < 2:
        raise DataError(f"{split_dir} has one class folder ({classes[0]}): a classifier needs at least two; "
                        f"lay images out as {LAYOUT}")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"class folder {split_dir / name} has no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}): add images or remove it")
        samples += [(p, label) for p in files]
    unreadable = [p for p, _ in samples if not _has_image_header(p)]
    if unreadable:
        more = f" (+{len(unreadable) - 3} more)" if len(unreadable) > 3 else ""
        shown = ", ".join(str(p) for p in unreadable[:3]) + more
        raise DataError(f"{len(unreadable)} file(s) in {split_dir} are not images: {shown}; replace or delete them")
    return classes, samples


def _has_image_header(path: Path) -> bool:
    """Whether PIL recognizes the file's header (cheap: the pixels are not decoded), so that a
    stray non-image fails when the dataset loads rather than hours into training."""
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _listing(names: set[str]) -> str:
    shown = sorted(names)[:5]
    return ", ".join(shown) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "") or "none"


def read_image_folder(root: Path) -> FolderData:
    """Scan ``root/train`` and ``root/val`` (or ``root/test``), which must hold the same classes.

    Raises:
        DataError: missing folders, a class folder without images, or classes that differ.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: pass --data-dir DIR laid out as {LAYOUT}")
    test_dir = next((root / n for n in TEST_DIR_NAMES if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root} needs a train/ and a val/ (or test/) folder: lay images out as {LAYOUT}")
    train_classes, train = scan_split(root / "train")
    test_classes, test = scan_split(test_dir)
    if train_classes != test_classes:
        only_train = set(train_classes) - set(test_classes)
        only_test = set(test_classes) - set(train_classes)
        raise DataError(f"class folders differ between {root / 'train'} and {test_dir} (only in "
                        f"train: {_listing(only_train)}; only in {test_dir.name}: "
                        f"{_listing(only_test)}): give both splits the same class folders")
    return FolderData(train=train, test=test, class_names=train_classes)


def read_folder(data_dir: Path | None = None, download: bool = False) -> FolderData:
    """A user's ImageFolder tree; ``download`` is ignored (there is nothing to fetch)."""
    if data_dir is None:
        raise DataError(f"dataset 'folder' needs --data-dir DIR laid out as {LAYOUT}")
    return read_image_folder(Path(data_dir))


def download_imagenette(root: Path) -> None:
    """Fetch and extract the 320-px ImageNette into ``root/imagenette2-320``."""
    import torchvision.datasets

    if hasattr(torchvision.datasets, "Imagenette"):
        try:
            torchvision.datasets.Imagenette(str(root), split="train", size="320px", download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise DataError(f"downloading ImageNette into {root} failed ({exc}): check the "
                            f"network, or fetch {IMAGENETTE_URL} by hand and pass --data-dir") from exc
        return
    archive = fetch_url(IMAGENETTE_URL, root / "imagenette2-320.tgz")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive} ({exc}): delete it and add --download again") from exc


def _imagenette_tree(root: Path) -> Path | None:
    for candidate in (root, *(root / d for d in IMAGENETTE_DIRS)):
        if (candidate / "train").is_dir():
            return candidate
    return None


def read_imagenette(data_dir: Path | None = None, download: bool = False) -> FolderData:
    """ImageNette (10 ImageNet classes; 9 469 train, 3 925 val images).

    Args:
        data_dir: the extracted ``imagenette2-320`` folder or the folder holding it;
            ``None`` = ``~/.cache/leenet/imagenette``.
        download: fetch the 320-px release into ``data_dir`` when it is not there.
    """
    root = Path(data_dir) if data_dir is not None else default_dir("imagenette")
    tree = _imagenette_tree(root)
    if tree is None and download:
        download_imagenette(root)
        tree = _imagenette_tree(root)
    if tree is None:
        raise DataError(f"ImageNette not found in {root}: pass --data-dir pointing at the "
                        f"extracted imagenette2-320 folder (train/ and val/ inside), or add --download")
    data = read_image_folder(tree)
    data.class_names = tuple(IMAGENETTE_NAMES.get(c, c) for c in data.class_names)
    return data
