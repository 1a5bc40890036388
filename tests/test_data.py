"""Tests of leenet.data on tiny files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from leenet.data import (
    DatasetSpec,
    ImageFolderDataset,
    TensorImageDataset,
    dataset_names,
    load_dataset,
    make_loader,
    split_calibration,
)
from leenet.datasets.idx import SYSTEM_DIR, parse_idx
from leenet.datasets.memory import random_crop, random_flip
from leenet.errors import DataError, LeenetError

# ---------------------------------------------------------------- fixtures: files on disk


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def tagged_images(n: int, channels: int, size: int) -> np.ndarray:
    """uint8 (n, C, S, S) random images whose pixel [0, 0, 0] is the sample's id."""
    images = np.random.default_rng(n).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """40 train (4 per class, gzipped) and 20 test (raw) Fashion-MNIST images."""
    folder = tmp_path / "fm"
    folder.mkdir()
    files = {"train-images-idx3-ubyte.gz": tagged_images(40, 1, 28)[:, 0],
             "train-labels-idx1-ubyte.gz": np.arange(40) % 10,
             "t10k-images-idx3-ubyte": tagged_images(20, 1, 28)[:, 0],
             "t10k-labels-idx1-ubyte": np.arange(20) % 10}
    for name, array in files.items():
        data = idx_bytes(np.asarray(array))
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return folder


def cifar_pickle(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)  # like the release: bytes keys, numpy data, list labels


def cifar10_members(per_batch: int = 10) -> dict[str, bytes]:
    members = {}
    for i in range(1, 6):
        images = tagged_images(per_batch, 3, 32).reshape(per_batch, -1)
        images[:, 1] = i  # batch number, so the concatenation order is visible
        members[f"data_batch_{i}"] = cifar_pickle(
            {b"data": images, b"labels": [k % 10 for k in range(per_batch)]})
    members["test_batch"] = cifar_pickle(
        {b"data": tagged_images(10, 3, 32).reshape(10, -1), b"labels": list(range(10))})
    names = [n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck").split()]
    members["batches.meta"] = cifar_pickle({b"label_names": names})
    return members


def write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cifar10_archive(tmp_path: Path) -> Path:
    return write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_members())


@pytest.fixture
def cifar100_archive(tmp_path: Path) -> Path:
    fine = [k % 100 for k in range(200)]
    members = {
        "train": cifar_pickle({b"data": tagged_images(200, 3, 32).reshape(200, -1),
                               b"fine_labels": fine, b"coarse_labels": [f % 20 for f in fine]}),
        "test": cifar_pickle({b"data": tagged_images(100, 3, 32).reshape(100, -1),
                              b"fine_labels": list(range(100)), b"coarse_labels": [0] * 100}),
        "meta": cifar_pickle({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}),
    }
    return write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)


def write_folder(root: Path, classes: dict[str, tuple[int, int]]) -> Path:
    """ImageFolder with ``classes[name] = (n_train, n_val)`` PNGs of 12x12 (some greyscale)."""
    rng = np.random.default_rng(0)
    for name, counts in classes.items():
        for split, count in zip(("train", "val"), counts):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                img = Image.fromarray(pixels if k % 3 else pixels[..., 0])
                img.save(root / split / name / f"{k}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "imgs", {"ant": (6, 2), "bee": (6, 2), "cat": (6, 2)})


def ids(ds: TensorImageDataset) -> set[int]:
    return set(ds.images[:, 0, 0, 0].tolist())


# ---------------------------------------------------------------- registry and arguments


def test_registry_names_and_unknown_name() -> None:
    assert dataset_names() == ["digits", "fashion-mnist", "cifar10", "cifar100", "imagenette", "folder",
                               "hf:NAME[:CONFIG]", "hf-local:DIR[:CONFIG]"]
    with pytest.raises(DataError, match=r"unknown dataset 'cifar' \(valid: digits, fashion-mnist.*, hf:NAME"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="unknown dataset 'hf'"):  # a form's own name is not a dataset
        load_dataset("hf")
    assert issubclass(DataError, LeenetError)


@pytest.mark.parametrize("calib_size", [0, -3, 39, 40, 41, 0.0, 1.0, 1.5, "a", True])  # 39 of 40 leaves 1 to train
def test_bad_calib_size(fashion_dir: Path, calib_size: object) -> None:
    with pytest.raises(DataError, match="calib_size"):
        load_dataset("fashion-mnist", data_dir=fashion_dir, calib_size=calib_size)


def test_too_few_training_samples_to_split() -> None:
    with pytest.raises(DataError, match="at least 3"):
        split_calibration(torch.tensor([0, 1]), 1, seed=0)


def test_split_calibration_is_disjoint_stratified_and_seeded() -> None:
    labels = torch.arange(100) % 4
    train, calib = split_calibration(labels, 0.2, seed=3)
    assert len(calib) == 20 and len(train) == 80
    assert sorted(torch.cat([train, calib]).tolist()) == list(range(100))
    assert torch.bincount(labels[calib]).tolist() == [5, 5, 5, 5]
    assert torch.equal(calib, split_calibration(labels, 20, seed=3)[1])
    assert not torch.equal(calib, split_calibration(labels, 20, seed=4)[1])
    # Too few held-out samples to stratify falls back to a plain random split.
    assert len(split_calibration(labels, 2, seed=0)[1]) == 2


def test_spec_coerces_lists_and_checks_lengths() -> None:
    spec = DatasetSpec("x", 2, 1, 8, [0.5], [0.25], ["a", "b"])
    assert spec.mean == (0.5,) and spec.class_names == ("a", "b")
    with pytest.raises(DataError, match="one value per channel"):
        DatasetSpec("x", 2, 3, 8, (0.5,), (0.25,), ("a", "b"))


# ---------------------------------------------------------------- digits (real sklearn data)


def test_digits_splits_shapes_and_fixed_test() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    assert a.spec.num_classes == 10 and a.spec.in_channels == 1 and a.spec.image_size == 8
    assert len(a.test) == 360 and len(a.train) + len(a.calib) == 1437
    assert len(a.calib) == round(0.2 * 1437)
    assert torch.equal(a.test.images, b.test.images)  # test split ignores the seed
    assert not torch.equal(a.calib.images, b.calib.images)
    x, y = a.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = next(iter(make_loader(a.train, 2000, train=False)))
    assert xb.shape == (len(a.train), 1, 8, 8) and yb.dtype == torch.int64
    assert abs(xb.mean().item()) < 0.05 and abs(xb.std().item() - 1) < 0.05
    assert a.train.images.max() == 16 and a.train.augment.flip is False


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_loads_gz_and_raw(fashion_dir: Path) -> None:
    splits = load_dataset("fashion-mnist", data_dir=fashion_dir, calib_size=10, seed=0)
    assert splits.spec.class_names[0] == "T-shirt/top" and splits.spec.image_size == 28
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (30, 10, 20)
    assert ids(splits.train).isdisjoint(ids(splits.calib))
    assert ids(splits.train) | ids(splits.calib) == set(range(40))
    assert torch.bincount(splits.calib.labels, minlength=10).tolist() == [1] * 10
    x, _ = splits.test[3]
    raw = splits.test.images[3].float() / 255
    assert torch.allclose(x, (raw - 0.2860) / 0.3530)
    again = load_dataset("fashion-mnist", data_dir=fashion_dir, calib_size=10, seed=0)
    assert ids(again.calib) == ids(splits.calib)


def test_fashion_mnist_resize_and_mean_override(fashion_dir: Path) -> None:
    splits = load_dataset("fashion-mnist", data_dir=fashion_dir, image_size=32, mean=(0.5,), std=(0.5,))
    assert splits.spec.image_size == 32 and splits.spec.mean == (0.5,)
    assert splits.train[0][0].shape == (1, 32, 32)
    assert next(iter(make_loader(splits.train, 8, train=True)))[0].shape == (8, 1, 32, 32)
    with pytest.raises(DataError, match="give 1 value$"):
        load_dataset("fashion-mnist", data_dir=fashion_dir, mean=(0.485, 0.456, 0.406))
    with pytest.raises(DataError, match="image_size"):
        load_dataset("fashion-mnist", data_dir=fashion_dir, image_size=0)


def test_loader_augments_only_for_train_and_is_seeded(fashion_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=fashion_dir).train  # 32 samples
    plain = torch.stack([ds[i][0] for i in range(len(ds))])
    eval_x = torch.cat([x for x, _ in make_loader(ds, 5, train=False)])
    assert torch.equal(eval_x, plain)  # fixed order, no augmentation, nothing dropped

    loader = make_loader(ds, 5, train=True, seed=7)
    assert len(loader) == 7  # 32 = 6 * 5 + 2: the last batch of two is kept
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = [(x, y) for x, y in loader]
    assert all(x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 for x, _ in first)
    assert not torch.equal(first[0][1], second[0][1])  # a new order on every pass
    replay = [(x, y) for x, y in make_loader(ds, 5, train=True, seed=7)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, replay))
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(ds.labels.tolist())  # every sample once per pass
    xs = torch.cat([x for x, _ in first])
    unchanged = sum(any(torch.equal(x, p) for p in plain) for x in xs)
    assert unchanged < len(xs) // 2  # crops and flips moved most samples


def test_train_loader_drops_a_last_batch_of_one() -> None:
    ds = TensorImageDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.zeros(10),
                            mean=(0.0,), std=(1.0,))
    assert len(make_loader(ds, 3, train=False)) == 4
    train = make_loader(ds, 3, train=True)
    assert len(train) == 3 and sum(len(y) for _, y in train) == 9
    generic = make_loader(TensorDataset(torch.zeros(7, 2), torch.arange(7)), 3, train=False)
    assert [len(y) for _, y in generic] == [3, 3, 1]
    with pytest.raises(DataError, match="batch_size"):
        make_loader(ds, 0, train=True)


def test_vectorized_crop_and_flip_match_reference() -> None:
    x = torch.randint(0, 256, (16, 2, 6, 6), dtype=torch.uint8)
    pad = 2
    cropped = random_crop(x, pad, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for b in range(16):  # every sample is some window of its own padded image
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(cropped[b], w) for w in windows)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[b], x[b]) for b in range(16)]
    assert all(s or torch.equal(flipped[b], x[b].flip(-1)) for b, s in enumerate(same))
    assert 0 < sum(same) < 16


def test_fashion_mnist_corrupt_files(fashion_dir: Path) -> None:
    labels = fashion_dir / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt.*replace it"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)
    labels.write_bytes(b"\x00\x00\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)
    labels.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="bad magic number"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)
    (fashion_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="cannot read .*train-images"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)


def test_fashion_mnist_files_that_do_not_belong_together(fashion_dir: Path) -> None:
    images = fashion_dir / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(idx_bytes(tagged_images(20, 1, 20)[:, 0]))  # 20x20 test images beside 28x28 training ones
    with pytest.raises(DataError, match="different datasets"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)
    images.write_bytes(good)
    (fashion_dir / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(40, dtype=np.uint8))))
    with pytest.raises(DataError, match="single class"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)


def test_fashion_mnist_missing_files(tmp_path: Path, fashion_dir: Path) -> None:
    with pytest.raises(DataError, match="not found.*dataset-fashion-mnist.*--data-dir.*--download"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    (fashion_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", data_dir=fashion_dir)


def test_parse_idx_shape() -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(array), "x"), array)
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"", "x")


@pytest.mark.skipif(not SYSTEM_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (48000, 12000, 10000)
    x, y = next(iter(make_loader(splits.test, 512, train=False)))
    assert x.shape == (512, 1, 28, 28) and int(y[0]) == 9  # the first test image is an ankle boot
    images = splits.train.images.float() / 255
    assert abs(images.mean().item() - 0.2860) < 0.003 and abs(images.std().item() - 0.3530) < 0.003


# ---------------------------------------------------------------- CIFAR


def test_cifar10_archive_folder_and_extracted_agree(cifar10_archive: Path, tmp_path: Path) -> None:
    extracted = tmp_path / "ex"
    with tarfile.open(cifar10_archive) as tar:
        tar.extractall(extracted, filter="data")
    views = [cifar10_archive, tmp_path, extracted, extracted / "cifar-10-batches-py"]
    loaded = [load_dataset("cifar10", data_dir=v, calib_size=0.2, seed=1) for v in views]
    for splits in loaded:
        assert splits.spec.class_names[:2] == ("airplane", "automobile")
        assert (len(splits.train), len(splits.calib), len(splits.test)) == (40, 10, 10)
        assert torch.equal(splits.calib.images, loaded[0].calib.images)
    full = loaded[0]
    assert full.train[0][0].shape == (3, 32, 32) and full.spec.in_channels == 3
    order = torch.cat([full.train.images, full.calib.images])[:, 0, 0, 1]
    assert sorted(order.tolist()) == sorted([1, 2, 3, 4, 5] * 10)


def test_cifar10_resize_for_large_backbones(cifar10_archive: Path) -> None:
    splits = load_dataset("cifar10", data_dir=cifar10_archive, image_size=64)
    x, _ = next(iter(make_loader(splits.train, 4, train=True)))
    assert x.shape == (4, 3, 64, 64) and splits.spec.image_size == 64


def test_cifar100_uses_fine_labels(cifar100_archive: Path) -> None:
    splits = load_dataset("cifar100", data_dir=cifar100_archive, calib_size=100)
    assert splits.spec.num_classes == 100 and splits.spec.class_names[99] == "c99"
    assert splits.test.labels.tolist() == list(range(100))
    assert torch.bincount(splits.calib.labels, minlength=100).tolist() == [1] * 100


def test_cifar_corrupt_and_missing(tmp_path: Path) -> None:
    members = cifar10_members()
    for labels in (["a"] * 10, [None] * 10, [2**70] * 10, [0.5] * 10):  # labels that are no class numbers
        members["data_batch_3"] = cifar_pickle({b"data": tagged_images(10, 3, 32).reshape(10, -1), b"labels": labels})
        with pytest.raises(DataError, match="data_batch_3 has labels that are not class numbers 0..9"):
            load_dataset("cifar10", data_dir=write_tar(tmp_path / "labels.tar.gz", "cifar-10-batches-py", members))
    members["data_batch_3"] = b"this is not a pickle"
    bad = write_tar(tmp_path / "garbage.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR pickle"):
        load_dataset("cifar10", data_dir=bad)
    members["data_batch_3"] = pickle.dumps(print)  # a global outside numpy: never resolved
    evil = write_tar(tmp_path / "evil.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar10", data_dir=evil)
    del members["test_batch"]
    partial = write_tar(tmp_path / "partial.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset("cifar10", data_dir=partial)
    (tmp_path / "trunc.tar.gz").write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read CIFAR-10"):
        load_dataset("cifar10", data_dir=tmp_path / "trunc.tar.gz")
    with pytest.raises(DataError, match="CIFAR-100 not found .*cifar-100-python.tar.gz.*--download"):
        load_dataset("cifar100", data_dir=tmp_path / "empty")


# ---------------------------------------------------------------- image folders


def test_folder_loads_lazily_with_transforms(image_folder: Path) -> None:
    splits = load_dataset("folder", data_dir=image_folder, image_size=16, calib_size=3)
    assert splits.spec.class_names == ("ant", "bee", "cat") and splits.spec.in_channels == 3
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (15, 3, 6)
    assert isinstance(splits.train, ImageFolderDataset) and not splits.train.augment
    x, y = splits.test[0]
    assert x.shape == (3, 16, 16) and y == 0
    for train in (True, False):
        xb, yb = next(iter(make_loader(splits.train, 4, train=train)))
        assert xb.shape == (4, 3, 16, 16) and yb.dtype == torch.int64
    assert load_dataset("folder", data_dir=image_folder).spec.image_size == 224


def test_folder_errors(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("folder")
    with pytest.raises(DataError, match="not found"):
        load_dataset("folder", data_dir=tmp_path / "none")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("folder", data_dir=tmp_path / "empty")
    (image_folder / "val" / "dog").mkdir()
    with pytest.raises(DataError, match="dog has no images"):
        load_dataset("folder", data_dir=image_folder)
    (image_folder / "val" / "dog").rename(image_folder / "val" / "emu")
    Image.new("RGB", (4, 4)).save(image_folder / "val" / "emu" / "0.png")
    with pytest.raises(DataError, match="only in train: none; only in val: emu"):
        load_dataset("folder", data_dir=image_folder)
    one_class = write_folder(tmp_path / "one", {"ant": (3, 2)})
    with pytest.raises(DataError, match="one class folder"):
        load_dataset("folder", data_dir=one_class)


def test_folder_corrupt_image(image_folder: Path) -> None:
    image = image_folder / "val" / "ant" / "0.png"
    good = image.read_bytes()
    image.write_bytes(b"not a png")  # no image header: refused when the dataset loads
    with pytest.raises(DataError, match=r"1 file\(s\) in .*val are not images: .*0.png"):
        load_dataset("folder", data_dir=image_folder, image_size=8)
    image.write_bytes(good[: len(good) // 2])  # a header, then truncated pixels: found when decoded
    (image_folder / "train" / "bee" / "notes.jpg").write_text("a text file with an image suffix")
    with pytest.raises(DataError, match=r"1 file\(s\) in .*train are not images: .*notes.jpg"):
        load_dataset("folder", data_dir=image_folder, image_size=8)
    (image_folder / "train" / "bee" / "notes.jpg").unlink()
    splits = load_dataset("folder", data_dir=image_folder, image_size=8)
    with pytest.raises(DataError, match="cannot read image .*0.png"):
        splits.test[0]


def test_imagenette_layout_and_names(tmp_path: Path) -> None:
    tree = write_folder(tmp_path / "imagenette2-320", {"n01440764": (2, 1), "n03888605": (2, 1)})
    splits = load_dataset("imagenette", data_dir=tmp_path, calib_size=1)
    assert splits.spec.class_names == ("tench", "parachute") and splits.spec.image_size == 224
    assert load_dataset("imagenette", data_dir=tree, calib_size=1).spec.num_classes == 2
    with pytest.raises(DataError, match="ImageNette not found.*--download"):
        load_dataset("imagenette", data_dir=tmp_path / "none")


def test_download_failure_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="downloading http://fashion-mnist.*offline.*--data-dir"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "fm", download=True)
    assert not list((tmp_path / "fm").glob("*"))  # no partial file left behind


def test_hf_datasets_without_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for stand_in in (None, types.ModuleType("datasets")):  # not installed; tests/datasets seen as a namespace
        monkeypatch.setitem(sys.modules, "datasets", stand_in)  # None: `import datasets` raises ImportError
        for name in ("hf:uoft-cs/cifar10", f"hf-local:{tmp_path}"):
            with pytest.raises(DataError, match=r"need the `datasets` package: pip install 'leenet\[hf\]'"):
                load_dataset(name)


def test_folder_dataset_of_encoded_images() -> None:
    png = io.BytesIO()
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(png, format="PNG")
    ds = ImageFolderDataset([(png.getvalue(), 1), (b"junk", 0)], image_size=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    x, y = ds[0]
    assert x.shape == (3, 4, 4) and y == 1 and ds.subset([1]).samples == [(b"junk", 0)]
    with pytest.raises(DataError, match="cannot decode an encoded image of 4 bytes .*: replace or drop that row"):
        ds[1]
