"""Tests of ``hf:`` and ``hf-local:`` datasets on tiny datasets written in the Hub's on-disk forms.

Each layout copies the columns of a real Hub dataset (``uoft-cs/cifar10``, ``uoft-cs/cifar100``,
``frgfm/imagenette``) and is written as parquet files in the Hub layout, as arrow files, and
with ``save_to_disk``; the offline Hub caches are laid out by hand as ``datasets`` and
``huggingface_hub`` write them. No network.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SKIP = "needs the optional `datasets` package: pip install 'leenet[hf]'"
datasets = pytest.importorskip("datasets", reason=SKIP)
if not hasattr(datasets, "load_dataset"):  # without the package, this very folder imports as `datasets`
    pytest.skip(SKIP, allow_module_level=True)

from leenet.data import DATASETS, ImageFolderDataset, TensorImageDataset, load_dataset  # noqa: E402
from leenet.datasets.hf_splits import read_splits  # noqa: E402
from leenet.errors import DataError  # noqa: E402

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENETTE_NAMES = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                    "garbage truck", "gas pump", "golf ball", "parachute"]
FORMS = ("parquet", "arrow", "disk")


@pytest.fixture(autouse=True)
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point both Hugging Face caches at empty folders: tests never see the user's cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def tagged(n: int, side: int, seed: int, grey: bool = False) -> list[bytes]:
    """``n`` PNGs whose pixel (0, 0) of the first channel is the row number."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, side, side) if grey else (n, side, side, 3), dtype=np.uint8)
    pixels[:, 0, 0] = np.arange(n)[:, None] if not grey else np.arange(n)
    return [encode(p) for p in pixels]


def table(features: dict, **columns: list) -> datasets.Dataset:
    images = {c: [{"bytes": b, "path": None} for b in v] for c, v in columns.items()
              if isinstance(features[c], datasets.Image)}
    return datasets.Dataset.from_dict({**columns, **images}, features=datasets.Features(features))


def cifar10(train: int = 30, test: int = 10, grey: bool = False) -> datasets.DatasetDict:
    """The columns of uoft-cs/cifar10: img (Image), label (ClassLabel); 8x8 images, label = row % 10."""
    features = {"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_NAMES)}
    return datasets.DatasetDict(
        train=table(features, img=tagged(train, 8, 0, grey), label=[i % 10 for i in range(train)]),
        test=table(features, img=tagged(test, 8, 1, grey), label=[i % 10 for i in range(test)]))


def cifar100() -> datasets.DatasetDict:
    """The columns of uoft-cs/cifar100: img, fine_label (100 classes), coarse_label (20 classes)."""
    features = {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=[f"f{i}" for i in range(100)]),
                "coarse_label": datasets.ClassLabel(names=[f"c{i}" for i in range(20)])}
    return datasets.DatasetDict({
        split: table(features, img=tagged(n, 8, seed), fine_label=[i % 100 for i in range(n)],
                     coarse_label=[i % 20 for i in range(n)])
        for split, n, seed in (("train", 200, 2), ("test", 100, 3))})


def imagenette() -> datasets.DatasetDict:
    """The columns of frgfm/imagenette: image, label; JPEGs of varying sizes, some grey; train and validation."""
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=IMAGENETTE_NAMES)}
    rng = np.random.default_rng(4)
    splits = {}
    for split, n in (("train", 20), ("validation", 10)):
        shapes = [(12 + i % 5, 16 + 3 * (i % 4)) + (() if i % 7 == 3 else (3,)) for i in range(n)]
        images = [encode(rng.integers(0, 256, s, dtype=np.uint8), "JPEG") for s in shapes]
        splits[split] = table(features, image=images, label=[i % 10 for i in range(n)])
    return datasets.DatasetDict(splits)


LAYOUTS = {"cifar10": (cifar10, "plain_text"), "cifar100": (cifar100, "cifar100"), "imagenette": (imagenette, "data")}


def write(dd: datasets.DatasetDict, root: Path, form: str, folder: str = "data", shards: int = 2) -> Path:
    """``dd`` as the Hub writes parquet (``folder/train-00000-of-00002.parquet``), as arrow files
    (``folder/train-00000-of-00001.arrow``), or with ``save_to_disk``."""
    if form == "disk":
        dd.save_to_disk(str(root))
        return root
    (root / folder).mkdir(parents=True)
    for split, ds in dd.items():
        if form == "parquet":
            for k in range(shards):
                name = f"{split}-{k:05d}-of-{shards:05d}.parquet"
                ds.shard(shards, k, contiguous=True).to_parquet(str(root / folder / name))
        else:
            ds.save_to_disk(str(root / "tmp" / split))
            arrow = root / "tmp" / split / "data-00000-of-00001.arrow"
            shutil.move(str(arrow), root / folder / f"{split}-00000-of-00001.arrow")
    shutil.rmtree(root / "tmp", ignore_errors=True)
    return root


def datasets_cache(cache: Path, repo: str, config: str, dd: datasets.DatasetDict) -> Path:
    """``dd`` where ``datasets.load_dataset(repo)`` leaves it: ``ns___name/config/0.0.0/hash/``."""
    name = repo.split("/")[-1]
    folder = cache / repo.replace("/", "___") / config / "0.0.0" / "0123456789abcdef"
    folder.mkdir(parents=True)
    splits = datasets.SplitDict({s: datasets.SplitInfo(name=s, num_examples=len(d), dataset_name=name)
                                 for s, d in dd.items()})
    datasets.DatasetInfo(features=dd["train"].features, dataset_name=name, config_name=config,
                         splits=splits).write_to_directory(str(folder))
    for split, ds in dd.items():
        ds.save_to_disk(str(cache / "tmp" / split))
        shutil.move(str(cache / "tmp" / split / "data-00000-of-00001.arrow"), folder / f"{name}-{split}.arrow")
    shutil.rmtree(cache / "tmp")
    return cache


def hub_snapshot(cache: Path, repo: str, configs: dict[str, datasets.DatasetDict]) -> Path:
    """``configs`` where ``hf download --repo-type dataset repo`` leaves them, README included."""
    base = cache / f"datasets--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("abc123")
    snapshot = base / "snapshots" / "abc123"
    lines = ["---", "configs:"]
    for config, dd in configs.items():
        write(dd, snapshot, "parquet", folder=config, shards=1)
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {s}\n    path: {config}/{s}-*" for s in dd]
    (snapshot / "README.md").write_text("\n".join([*lines, "---", f"# {repo}", ""]))
    return cache


# ---------------------------------------------------------------- what is read


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layout", ["cifar10", "cifar100"])
def test_small_images_are_held_in_memory(tmp_path: Path, layout: str, form: str) -> None:
    make, folder = LAYOUTS[layout]
    dd = make()
    splits = load_dataset(f"hf-local:{write(dd, tmp_path / layout, form, folder)}", calib_size=0.2, seed=0)
    classes = 10 if layout == "cifar10" else 100
    assert splits.spec.num_classes == classes and splits.spec.in_channels == 3 and splits.spec.image_size == 8
    assert splits.spec.class_names == tuple(dd["train"].features["label" if classes == 10 else "fine_label"].names)
    assert all(isinstance(s, TensorImageDataset) for s in (splits.train, splits.calib, splits.test))
    n_train, n_test = len(dd["train"]), len(dd["test"])
    assert len(splits.train) + len(splits.calib) == n_train and len(splits.calib) == round(0.2 * n_train)
    rows = torch.cat([splits.train.images[:, 0, 0, 0], splits.calib.images[:, 0, 0, 0]]).long()
    assert sorted(rows.tolist()) == list(range(n_train))  # every training row once, in train or calib
    for ds in (splits.train, splits.calib, splits.test):  # labels stay with their images: label = row % classes
        assert torch.equal(ds.labels, ds.images[:, 0, 0, 0].long() % classes)
    assert splits.test.images[:, 0, 0, 0].tolist() == list(range(n_test))  # the test split, in order
    assert splits.train.augment.pad == 1 and splits.train.augment.flip
    x, y = splits.test.batch([0, 1])
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and y.tolist() == [0, 1]


@pytest.mark.parametrize("form", FORMS)
def test_images_of_varying_sizes_are_decoded_lazily(tmp_path: Path, form: str) -> None:
    dd = imagenette()
    name = f"hf-local:{write(dd, tmp_path / 'nette', form)}"
    splits = load_dataset(name, calib_size=4, seed=0, image_size=32)
    assert splits.spec.class_names == tuple(IMAGENETTE_NAMES) and splits.spec.in_channels == 3
    assert all(isinstance(s, ImageFolderDataset) for s in (splits.train, splits.calib, splits.test))
    assert len(splits.train) == 16 and len(splits.calib) == 4 and len(splits.test) == 10  # test = validation
    assert splits.test.labels.tolist() == dd["validation"]["label"]
    assert [s for s, _ in splits.test.samples] == [c["bytes"] for c in dd["validation"].cast_column(
        "image", datasets.Image(decode=False))["image"]]
    x, y = splits.train[3]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    assert load_dataset(name, calib_size=4).spec.image_size == 224  # the folder datasets' default


def test_grey_images_keep_one_channel_and_are_not_mirrored(tmp_path: Path) -> None:
    splits = load_dataset(f"hf-local:{write(cifar10(grey=True), tmp_path / 'grey', 'parquet')}", calib_size=5)
    assert splits.spec.in_channels == 1 and splits.train.images.shape[1:] == (1, 8, 8)
    assert not splits.train.augment.flip
    assert torch.equal(splits.test.labels, splits.test.images[:, 0, 0, 0].long() % 10)


def test_calibration_split_follows_the_seed(tmp_path: Path) -> None:
    name = f"hf-local:{write(cifar10(train=60), tmp_path / 'c', 'disk')}"
    calib = [load_dataset(name, calib_size=10, seed=s).calib.images[:, 0, 0, 0].tolist() for s in (0, 0, 1)]
    assert calib[0] == calib[1] != calib[2]
    labels = load_dataset(name, calib_size=10, seed=0).calib.labels
    assert torch.bincount(labels, minlength=10).tolist() == [1] * 10  # stratified


def test_label_column_prefers_label_then_fine(tmp_path: Path) -> None:
    features = {"coarse_label": datasets.ClassLabel(names=["a", "b"]), "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=["x", "y", "z"])}
    split = table(features, coarse_label=[0, 1, 0, 1, 0, 1], img=tagged(6, 4, 0), fine_label=[0, 1, 2, 0, 1, 2])
    root = write(datasets.DatasetDict(train=split, test=split), tmp_path / "d", "disk")
    assert load_dataset(f"hf-local:{root}", calib_size=2).spec.class_names == ("x", "y", "z")


def test_offline_datasets_cache(tmp_path: Path) -> None:
    cache = datasets_cache(tmp_path / "cache", "uoft-cs/cifar10", "plain_text", cifar10())
    for name in ("hf:uoft-cs/cifar10", "hf:uoft-cs/cifar10:plain_text"):
        splits = load_dataset(name, data_dir=cache, calib_size=5)
        assert splits.spec.class_names == tuple(CIFAR10_NAMES) and len(splits.test) == 10
        assert splits.test.images[:, 0, 0, 0].tolist() == list(range(10))
    assert not datasets.config.HF_HUB_OFFLINE  # the offline switch is put back
    datasets.config.HF_DATASETS_CACHE = str(cache)  # the default cache (reset by the autouse fixture)
    assert len(load_dataset("hf:uoft-cs/cifar10", calib_size=5).train) == 25
    with pytest.raises(DataError, match=r"configuration nope is not in the cache .*\(cached: plain_text\): "
                                        r"use hf:uoft-cs/cifar10:plain_text"):
        load_dataset("hf:uoft-cs/cifar10:nope", data_dir=cache)


def test_offline_hub_snapshot(tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "home" / "hub", "frgfm/imagenette", {"320px": imagenette(), "160px": imagenette()})
    cache = tmp_path / "home"  # like $HF_HOME: the hub cache is its hub/ folder
    splits = load_dataset("hf:frgfm/imagenette:320px", data_dir=cache, calib_size=4, image_size=16)
    assert len(splits.test) == 10 and splits.spec.class_names == tuple(IMAGENETTE_NAMES)
    with pytest.raises(DataError, match=r"several configurations \(320px, 160px\): add one, e\.g\. "
                                        r"hf:frgfm/imagenette:320px"):
        load_dataset("hf:frgfm/imagenette", data_dir=cache)


def test_registry_lists_the_forms() -> None:
    assert DATASETS["hf:NAME[:CONFIG]"].prefix == "hf:" and "hf:uoft-cs/cifar10" in DATASETS["hf:NAME[:CONFIG]"].description
    assert DATASETS["hf-local:DIR[:CONFIG]"].prefix == "hf-local:"


# ---------------------------------------------------------------- bad input: one line that says the fix


def saved(tmp_path: Path, **splits: datasets.Dataset) -> str:
    return f"hf-local:{write(datasets.DatasetDict(splits), tmp_path / 'bad', 'disk')}"


def test_name_not_in_the_offline_cache(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"hf:uoft-cs/cifar11 is not in the offline Hugging Face cache .*: "
                                        r"add --download"):
        load_dataset("hf:uoft-cs/cifar11")
    with pytest.raises(DataError, match="give a Hub dataset id after hf:"):
        load_dataset("hf:not a name")


def test_download_goes_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, config: str | None, *, cache_dir: str) -> datasets.DatasetDict:
        calls.append((name, config, cache_dir, datasets.config.HF_HUB_OFFLINE))
        if name != "uoft-cs/cifar10":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return cifar10()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_dataset("hf:uoft-cs/cifar10:plain_text", download=True, data_dir=tmp_path, calib_size=5)
    assert calls == [("uoft-cs/cifar10", "plain_text", str(tmp_path), False)] and len(splits.test) == 10
    with pytest.raises(DataError, match=r"downloading hf:no/such failed \(Dataset 'no/such' doesn't exist on "
                                        r"the Hub\): check the name"):
        load_dataset("hf:no/such", download=True)


def test_download_refused_while_hub_is_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="HF_HUB_OFFLINE=1 forbids --download: unset HF_HUB_OFFLINE"):
        load_dataset("hf:uoft-cs/cifar10", download=True)


def test_missing_image_or_label_column_names_the_columns(tmp_path: Path) -> None:
    text = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    with pytest.raises(DataError, match=r"no Image column \(columns: text: Value, label: ClassLabel\)"):
        load_dataset(saved(tmp_path, train=table(text, text=["x", "y"], label=[0, 1]),
                           test=table(text, text=["z"], label=[1])))
    ints = {"img": datasets.Image(), "label": datasets.Value("int64")}
    split = table(ints, img=tagged(4, 4, 0), label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"no ClassLabel column \(columns: img: Image, label: Value\): cast"):
        load_dataset(saved(tmp_path / "2", train=split, test=split))


def test_splits_with_other_classes(tmp_path: Path) -> None:
    dd = cifar10()
    other = dd["test"].cast_column("label", datasets.ClassLabel(names=[f"x{i}" for i in range(10)]))
    with pytest.raises(DataError, match=r"the test split's image or label column or classes differ from train's "
                                        r"\('img', 'label'\): give both splits the same features"):
        load_dataset(saved(tmp_path, train=dd["train"], test=other))


def test_missing_split_names_the_splits(tmp_path: Path) -> None:
    dd = cifar10()
    with pytest.raises(DataError, match=r"no test or validation split \(splits: train\): split one off"):
        load_dataset(saved(tmp_path, train=dd["train"]))
    with pytest.raises(DataError, match=r"no train split \(splits: test\)"):
        load_dataset(saved(tmp_path / "2", test=dd["test"]))


def test_non_image_bytes_name_the_row(tmp_path: Path) -> None:
    images = tagged(6, 4, 0)
    images[3] = b"not an image at all"
    features = {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    split = table(features, img=images, label=[0, 1] * 3)
    with pytest.raises(DataError, match=r"row 3 of the train split holds 19 bytes in column 'img' that are "
                                        r"not an image .*: fix or drop that row"):
        load_dataset(saved(tmp_path, train=split, test=split))


def test_images_stored_as_paths(tmp_path: Path) -> None:
    """Datasets built from local files (imagefolder, in the datasets cache) hold paths, not bytes."""
    files = []
    for i, pixels in enumerate(np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(pixels).save(files[-1])
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"img": files, "label": [0, 1, 0, 1]}, features=features)
    data = read_splits(datasets, "paths", {"train": split, "test": split})
    assert data.train_x.shape == (4, 3, 6, 6) and data.test_y.tolist() == [0, 1, 0, 1]
    Path(files[2]).unlink()
    with pytest.raises(DataError, match=r"row 2 of the train split's 'img' names the missing file .*2\.png: restore"):
        read_splits(datasets, "paths", {"train": split, "test": split})


def test_empty_split_and_unlabeled_rows(tmp_path: Path) -> None:
    dd = cifar10()
    empty = datasets.DatasetDict(train=dd["train"], test=dd["test"].select([]))
    with pytest.raises(DataError, match="the test split has no rows: give it images"):
        load_dataset(f"hf-local:{write(empty, tmp_path / 'empty', 'parquet', shards=1)}")
    unlabeled = dd["test"].cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    unlabeled = unlabeled.cast_column("label", dd["test"].features["label"])
    with pytest.raises(DataError, match=r"row 0 of the test split has label -1, outside 0\.\.9 \(-1: unlabeled\)"):
        load_dataset(saved(tmp_path / "2", train=dd["train"], test=unlabeled))


def test_local_folder_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder .*nowhere not found"):
        load_dataset(f"hf-local:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .parquet or .arrow files"):
        load_dataset(f"hf-local:{tmp_path / 'empty'}")
    root = write(cifar10(), tmp_path / "two", "parquet", folder="a")
    shutil.copytree(root / "a", root / "b")  # two configurations, no README to tell them apart
    with pytest.raises(DataError, match=r"several configurations \(a, b\): use hf-local:.*two/a"):
        load_dataset(f"hf-local:{tmp_path / 'two'}")
    with pytest.raises(DataError, match="a save_to_disk folder has no configurations: drop :x"):
        load_dataset(f"{saved(tmp_path, train=cifar10()['train'])}:x")
    with pytest.raises(DataError, match="would be ignored: drop it"):
        load_dataset(f"hf-local:{tmp_path / 'two' / 'b'}", data_dir=tmp_path)
