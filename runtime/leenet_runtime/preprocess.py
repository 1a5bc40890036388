"""Image files → network inputs, the way LEENet prepared the training images (numpy and Pillow only).

Two resize modes, one per kind of LEENet dataset (see :class:`~leenet_runtime.manifest.Preprocessing`):

* ``"stretch"`` (digits, Fashion-MNIST, CIFAR): pixels are scaled to [0, 1] and resized
  to the network's size with bilinear interpolation, antialiased when shrinking, as
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=...)``
  does. :func:`resize_weights` builds the same separable weights (Pillow's triangle filter,
  which torch's antialiased kernel copies), so results agree with torch to float rounding.
  Differences: the image's aspect ratio is not kept (the datasets' images are square), and
  antialiasing is decided per axis (torch decides once from the width).
* ``"shorter-side-crop"`` (ImageNette, folders): the shorter side is resized to
  ``resize_size`` with Pillow's bilinear filter, then the centre is cropped, as torchvision's
  ``Resize`` + ``CenterCrop``. Torchvision resizes the uint8 tensor with torch's
  Pillow-compatible kernel; pixels may differ by one grey level from Pillow's.

Files are converted to the training images' colour (``"L"`` or ``"RGB"``, Pillow's
conversion: alpha is dropped, palettes expanded). A file is scaled by the full scale of its
bit depth, so black is 0.0 and full brightness 1.0 whatever range the dataset stored: an
8-bit file's 0..255 (``Preprocessing.value_max``) and a 16-bit grey PNG's 0..65535 map
linearly onto the training images' range (0..16 for scikit-learn digits, 0..255 for the
others). ``value_max`` overrides this for files that use another range (a 12-bit sensor in a
16-bit file: 4095; files holding the digits' raw 0..16: 16); 32-bit integer and float
files need it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from leenet_runtime.manifest import ExportError, Preprocessing

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
# Pillow's single-channel modes wider than 8 bits → their full scale (None: no fixed one). Pillow's
# conversion of these to "L" or "RGB" clips at 255, so they are read as float ("F") instead.
WIDE_MODES: dict[str, float | None] = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                                       "I": None, "F": None}


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of bilinear resizing along one axis, antialiased when shrinking.

    Output pixel ``i`` is centred at ``(i + 0.5) * n_in / n_out`` in input coordinates; the
    triangle filter's radius is 1 input pixel, widened to the scale when shrinking; weights
    are normalized over the pixels that exist (so edges repeat, as torch clamps).
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale  # (n_out,)
    taps = np.arange(n_in) + 0.5  # (n_in,) input pixel centres
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def stretch(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize (C, h, w) float to (C, H, W) with :func:`resize_weights` on each axis."""
    height, width = int(size[0]), int(size[1])
    if x.shape[1:] == (height, width):
        return x
    rows = resize_weights(x.shape[1], height)  # (H, h)
    cols = resize_weights(x.shape[2], width)  # (W, w)
    return np.einsum("Hh,chw,Ww->cHW", rows, x.astype(np.float64), cols).astype(np.float32)


def shorter_side_crop(img: Image.Image, resize_size: int, size: Sequence[int]) -> Image.Image:
    """Resize the shorter side to ``resize_size`` (Pillow bilinear), then crop ``size`` (H, W) at the centre."""
    w, h = img.size
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - size[0]) / 2.0), round((new_w - size[1]) / 2.0)  # as torchvision's CenterCrop
    return img.crop((left, top, left + int(size[1]), top + int(size[0])))


def check_value_max(value_max: float) -> float:
    """``value_max`` as a float, or an ExportError if it is not a positive number."""
    if not value_max > 0 or value_max == float("inf"):
        raise ExportError(f"value_max (--value-max) must be the positive file value of full brightness, "
                          f"got {value_max}")
    return float(value_max)


def full_scale(img: Image.Image, prep: Preprocessing, value_max: float | None = None) -> float:
    """The file value that maps to 1.0: ``value_max`` if given, else the full scale of ``img``'s bit depth.

    Raises:
        ExportError: a 32-bit integer or float image and no ``value_max``.
    """
    if value_max is not None:
        return check_value_max(value_max)
    if img.mode not in WIDE_MODES:
        return prep.value_max
    scale = WIDE_MODES[img.mode]
    if scale is None:
        raise ExportError(f"{img.mode!r} pixels (32-bit) have no fixed full scale: pass the value of full "
                          "brightness as value_max (--value-max), or save the image as 8- or 16-bit")
    return scale


def preprocess_image(img: Image.Image, prep: Preprocessing, *, value_max: float | None = None) -> np.ndarray:
    """One Pillow image → (C, H, W) float32 network input.

    Args:
        img: any size and mode.
        prep: the export's preprocessing.
        value_max: file value that maps to 1.0 (default: :func:`full_scale`, e.g. 255 for 8-bit files).

    Raises:
        ExportError: see :func:`full_scale`.
    """
    scale = full_scale(img, prep, value_max)
    img = img.convert("F") if img.mode in WIDE_MODES else img.convert(prep.color)
    if prep.resize == "shorter-side-crop":
        img = shorter_side_crop(img, prep.resize_size, prep.image_size)
    x = np.asarray(img, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # (C, h, w)
    x = x / np.float32(scale)
    x = stretch(x, prep.image_size)
    if x.shape[0] != prep.channels:  # grey images (or wide grey files) fed to an RGB network are repeated
        x = np.repeat(x, prep.channels, axis=0)
    mean = np.asarray(prep.mean, np.float32)[:, None, None]
    std = np.asarray(prep.std, np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def open_image(source: str | Path | BinaryIO, *, max_pixels: int | None = None) -> Image.Image:
    """Open and decode an image file (a path or a binary stream).

    Args:
        source: a path, or a binary file object (an HTTP body in a ``BytesIO``).
        max_pixels: refuse larger images before decoding them (a decompression bomb); default
            Pillow's own limit.

    Raises:
        ExportError: missing, not an image Pillow can decode, truncated, or too large (one line).
    """
    name = getattr(source, "name", source)
    try:
        img = Image.open(source)
        if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
            w, h = img.size
            raise ExportError(f"image {name} is {w}x{h} pixels, more than the limit of {max_pixels}: "
                              "send a smaller image")
        img.load()
        return img
    except Image.DecompressionBombError:
        raise ExportError(f"image {name} has more pixels than the limit of {max_pixels or Image.MAX_IMAGE_PIXELS} "
                          "(a decompression bomb?): send a smaller image") from None
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
        reason = ("not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError)
                  else " ".join(str(exc).split()) or type(exc).__name__)
        raise ExportError(f"cannot read image {name} ({reason}): pass a PNG or JPEG file") from None


def read_image(path: str | Path, prep: Preprocessing, *, value_max: float | None = None) -> np.ndarray:
    """Read and preprocess one file (see :func:`preprocess_image`).

    Raises:
        ExportError: the file is missing, not an image Pillow can decode, or of no fixed
            range and no ``value_max`` (one line).
    """
    with open_image(path) as img:
        try:
            return preprocess_image(img, prep, value_max=value_max)
        except ExportError as exc:
            raise ExportError(f"cannot read image {path}: {exc}") from None


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files (by suffix, sorted) of each directory given."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def load_images(paths: Sequence[str | Path], prep: Preprocessing, *,
                value_max: float | None = None) -> tuple[np.ndarray, list[Path], list[str]]:
    """Read and preprocess files into one batch, skipping the unreadable ones.

    Returns:
        batch (N, C, H, W) float32 of the files read, those N files, and one message per
        file that could not be read.
    """
    images, read, errors = [], [], []
    for path in map(Path, paths):
        try:
            images.append(read_image(path, prep, value_max=value_max))
            read.append(path)
        except ExportError as exc:
            errors.append(str(exc))
    shape = (prep.channels, *prep.image_size)
    batch = np.stack(images) if images else np.zeros((0, *shape), np.float32)
    return batch, read, errors
