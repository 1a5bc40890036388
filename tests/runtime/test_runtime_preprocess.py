"""Runtime preprocessing against LEENet's own (torch) preprocessing of the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leenet.data import TensorImageDataset
from leenet.datasets.folder import build_transform
from leenet_runtime import ExportError, Preprocessing
from leenet_runtime.preprocess import expand_paths, load_images, read_image, resize_weights

MEAN3, STD3 = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _pixels(shape: tuple[int, ...], high: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape, dtype=np.uint8)


def _prep(size: tuple[int, int], channels: int, color: str, value_max: float = 255.0, **kw) -> Preprocessing:
    mean = MEAN3[:channels] if channels == 3 else (0.3,)
    std = STD3[:channels] if channels == 3 else (0.35,)
    return Preprocessing(image_size=size, resize=kw.get("resize", "stretch"), resize_size=kw.get("resize_size", 0),
                         color=color, channels=channels, value_max=value_max, mean=mean, std=std)


@pytest.mark.parametrize("n_in, n_out", [(8, 32), (28, 8), (10, 7), (7, 10), (5, 5), (9, 1)])
def test_resize_weights_match_torch_interpolate(n_in: int, n_out: int) -> None:
    x = torch.rand(1, 1, n_in, n_in, dtype=torch.float64)
    want = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False, antialias=n_out < n_in)
    w = resize_weights(n_in, n_out)
    np.testing.assert_allclose(w @ x[0, 0].numpy() @ w.T, want[0, 0].numpy(), atol=1e-12)


@pytest.mark.parametrize("native, size", [(20, 12), (8, 32), (16, 16)])
@pytest.mark.parametrize("channels", [1, 3])
def test_stretch_matches_the_in_memory_datasets(tmp_path: Path, native: int, size: int, channels: int) -> None:
    pixels = _pixels((channels, native, native))
    mode = "L" if channels == 1 else "RGB"
    path = tmp_path / "img.png"
    Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0), mode=mode).save(path)
    prep = _prep((size, size), channels, mode)
    ds = TensorImageDataset(torch.from_numpy(pixels[None]), torch.zeros(1), mean=prep.mean, std=prep.std,
                            image_size=size, value_max=255.0)
    want = ds.batch([0])[0][0].numpy()
    np.testing.assert_allclose(read_image(path, prep), want, atol=1e-5)


def test_8bit_files_map_linearly_onto_the_digits_range(tmp_path: Path) -> None:
    digits = _pixels((8, 8), high=17)  # the dataset's 0..16
    path = tmp_path / "digit.png"
    Image.fromarray(np.round(digits * 255.0 / 16).astype(np.uint8), mode="L").save(path)
    prep = _prep((8, 8), 1, "L")
    ds = TensorImageDataset(torch.from_numpy(digits[None, None]), torch.zeros(1), mean=prep.mean, std=prep.std,
                            value_max=16.0)
    # 8-bit rounding: within half a grey level of the dataset's own scaling
    np.testing.assert_allclose(read_image(path, prep), ds.batch([0])[0][0].numpy(), atol=0.5 / 255 / 0.35 + 1e-6)
    Image.fromarray(digits, mode="L").save(path)  # raw 0..16: exact with value_max=16
    np.testing.assert_allclose(read_image(path, prep, value_max=16), ds.batch([0])[0][0].numpy(), atol=1e-6)


def test_grey_files_are_repeated_for_rgb_networks(tmp_path: Path) -> None:
    pixels = _pixels((8, 8))
    path = tmp_path / "grey.png"
    Image.fromarray(pixels, mode="L").save(path)
    rgb = read_image(path, _prep((8, 8), 3, "L"))
    np.testing.assert_allclose(rgb * np.array(STD3)[:, None, None] + np.array(MEAN3)[:, None, None],
                               np.repeat(pixels[None] / 255.0, 3, axis=0), atol=1e-6)


@pytest.mark.parametrize("channels, color", [(1, "L"), (3, "L"), (3, "RGB")])
def test_16bit_grey_files_are_scaled_by_65535(tmp_path: Path, channels: int, color: str) -> None:
    pixels = _pixels((12, 10))
    narrow, wide = tmp_path / "narrow.png", tmp_path / "wide.png"
    Image.fromarray(pixels, mode="L").save(narrow)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(wide)  # the same brightness in 16 bits
    prep = _prep((8, 8), channels, color)
    np.testing.assert_allclose(read_image(wide, prep), read_image(narrow, prep), atol=1e-5)


def test_16bit_grey_files_in_the_folder_transform(tmp_path: Path) -> None:
    pixels = _pixels((12, 10))
    narrow, wide = tmp_path / "narrow.png", tmp_path / "wide.png"
    Image.fromarray(pixels, mode="L").save(narrow)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(wide)
    crop = _prep((8, 8), 3, "RGB", resize="shorter-side-crop", resize_size=9)
    # Pillow resizes the 8-bit image in fixed point, the 16-bit one in float: one grey level apart at most
    assert np.abs(read_image(wide, crop) - read_image(narrow, crop)).max() <= 1.01 / 255 / min(STD3)


def test_32bit_files_need_value_max(tmp_path: Path) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((8, 8), 1000.0, np.float32), mode="F").save(path)
    with pytest.raises(ExportError, match="pass the value of full brightness") as err:
        read_image(path, _prep((8, 8), 1, "L"))
    assert "\n" not in str(err.value) and "wide.tif" in str(err.value)
    np.testing.assert_allclose(read_image(path, _prep((8, 8), 1, "L"), value_max=2000.0), (0.5 - 0.3) / 0.35,
                               atol=1e-6)
    with pytest.raises(ExportError, match="must be the positive"):
        read_image(path, _prep((8, 8), 1, "L"), value_max=0.0)


def test_colour_files_become_grey_and_grey_files_rgb(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(_pixels((10, 12, 3)), mode="RGB").save(path)
    assert read_image(path, _prep((8, 8), 1, "L")).shape == (1, 8, 8)
    Image.fromarray(_pixels((10, 12)), mode="L").save(path)
    assert read_image(path, _prep((8, 8), 3, "RGB")).shape == (3, 8, 8)


@pytest.mark.parametrize("width, height", [(50, 37), (37, 50), (64, 64)])
def test_shorter_side_crop_matches_the_folder_transform(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(_pixels((height, width, 3)), mode="RGB").save(path)
    prep = _prep((28, 28), 3, "RGB", resize="shorter-side-crop", resize_size=int(28 * 256 / 224))
    with Image.open(path) as img:
        want = build_transform(28, MEAN3, STD3, train=False)(img.convert("RGB")).numpy()
    got = read_image(path, prep)
    assert got.shape == want.shape == (3, 28, 28)
    # torchvision resizes the uint8 tensor, Pillow the image: at most one grey level apart
    assert np.abs(got - want).max() <= 1.01 / 255 / min(STD3)


def test_unreadable_files_are_reported_one_line_each(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(_pixels((8, 8)), mode="L").save(good)
    bad.write_bytes(b"\x89PNG but not really")
    batch, read, errors = load_images([bad, good, tmp_path / "missing.jpg"], _prep((8, 8), 1, "L"))
    assert batch.shape == (1, 1, 8, 8) and read == [good]
    assert len(errors) == 2 and all("\n" not in e and "cannot read image" in e for e in errors)
    with pytest.raises(ExportError, match="b.png"):
        read_image(bad, _prep((8, 8), 1, "L"))


def test_directories_expand_to_their_images_in_name_order(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.JPG", "b.png"]
