"""The original LEENet setups end to end: ResNet-50, VGG-11(-BN), DenseNet-121 and their
32-pixel variants on CIFAR-10, CIFAR-100 and ImageNette-style folders.

Each dataset is written to disk in its real format (the CIFAR python-pickle release as a
``.tar.gz`` or extracted folder, an ImageFolder tree of PNGs) with a few dozen random
images, and the whole pipeline runs on it with random weights at a small input size. The
accuracies mean nothing; the tests check the wiring: artifacts, the results schema, that
``model.pt`` reproduces the run's routed predictions, and the weights options.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leenet import backbones as zoo
from leenet import data
from leenet.checkpoint import load_checkpoint, read_checkpoint
from leenet.cli import main
from leenet.config import DataConfig, GateTrainConfig, ModelConfig, RunConfig, TrainConfig
from leenet.errors import DataError, LeenetError
from leenet.pipeline import run

ALPHAS = (0.0, 0.5, 1.0)
POLICY_METHODS = {"leenet", "max_softmax", "entropy", "single_exit", "oracle"}
ARTIFACTS = ("results.json", "config.json", "model.pt", "report.html")
CLI_FAST = ["--epochs", "1", "--head-epochs", "1", "--batch-size", "16", "--calib-size", "12",
            "--alphas", "0,0.5,1", "--gate-steps", "20", "--device", "cpu", "--no-timing", "--quiet"]


# ---------------------------------------------------------------- tiny datasets on disk

def _cifar_batch(rng: np.random.Generator, n: int, classes: int, label_key: bytes) -> dict:
    return {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            label_key: [int(k % classes) for k in range(n)]}


def write_cifar(root: Path, classes: int = 10, *, n_train: int = 50, n_test: int = 20,
                extracted: bool = False, seed: int = 0) -> Path:
    """A CIFAR-10 (``classes=10``) or CIFAR-100 python release: the archive, or its folder."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        files = {f"data_batch_{i}": _cifar_batch(rng, n_train // 5, 10, b"labels") for i in range(1, 6)}
        files["test_batch"] = _cifar_batch(rng, n_test, 10, b"labels")
        files["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    else:
        folder, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        files = {"train": _cifar_batch(rng, n_train, classes, b"fine_labels"),
                 "test": _cifar_batch(rng, n_test, classes, b"fine_labels"),
                 "meta": {b"fine_label_names": [f"class{i}".encode() for i in range(classes)]}}
    blobs = {name: pickle.dumps(obj, protocol=2) for name, obj in files.items()}
    if extracted:
        (root / folder).mkdir(parents=True)
        for name, blob in blobs.items():
            (root / folder / name).write_bytes(blob)
        return root / folder
    path = root / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_image_folder(root: Path, classes: tuple[str, ...] = ("a", "b", "c"), *,
                       per_class: tuple[int, int] = (12, 4), size: int = 40) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` of random RGB images."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> dict[str, Path]:
    """Every tiny dataset, written once for the module."""
    root = tmp_path_factory.mktemp("datasets")
    for sub in ("c10", "c10x", "c100"):
        (root / sub).mkdir()
    imagenette = ("n01440764", "n02102040", "n02979186")  # tench, English springer, cassette player
    return {
        "cifar10": write_cifar(root / "c10"),
        "cifar10_extracted": write_cifar(root / "c10x", extracted=True),
        "cifar100": write_cifar(root / "c100", classes=100, n_train=100),
        "folder": write_image_folder(root / "folder"),
        "imagenette": write_image_folder(root / "imagenette" / "imagenette2-320", imagenette).parent,
    }


def config_for(dataset: str, data_dir: Path, out: Path, *, arch: str, image_size: int, epochs: int = 1,
               **model) -> RunConfig:
    """A fast run: 1 backbone epoch, 1 head epoch, 3 alphas, CPU, no timing."""
    return RunConfig(
        data=DataConfig(dataset=dataset, data_dir=str(data_dir), image_size=image_size, batch_size=16,
                        calib_size=12),
        model=ModelConfig(arch=arch, **model),
        train=TrainConfig(epochs=epochs, head_epochs=1,
                          gates=GateTrainConfig(steps=20)),
        alphas=ALPHAS, seed=0, device="cpu", out=str(out), timing=False, progress=False,
    )


# ---------------------------------------------------------------- checks shared by every run

def check_results(out: Path, *, dataset: str, arch: str, exits: tuple[str, ...]) -> dict:
    """Artifacts exist and results.json carries every required field; returns it."""
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == dataset
    backbone = results["backbone"]
    assert backbone["name"] == arch and 0 <= backbone["accuracy"] <= 1
    assert backbone["flops"] > 0 and backbone["macs"] == backbone["flops"] // 2
    assert "multiply-adds" in results["flops_convention"]
    assert [e["name"] for e in results["exits"]] == [*exits, "final"]
    costs = [e["cost"] for e in results["exits"]]
    assert all({"name", "cost", "accuracy"} <= e.keys() for e in results["exits"])
    assert costs == sorted(costs) and 0 < costs[0] and costs[-1] == pytest.approx(1.0), costs
    predict = results["gates"]["training"]["objective"] == "predict"  # the resolved gate settings
    expected = POLICY_METHODS | ({"leenet_budget"} if predict else set())  # budgets solved from predict gates
    assert {p["method"] for p in results["policies"]} == expected
    for policy in results["policies"]:
        assert {"method", "param", "accuracy", "cost", "exit_fractions"} <= policy.keys()
        assert len(policy["exit_fractions"]) == len(exits) + 1
        assert sum(policy["exit_fractions"]) == pytest.approx(1.0, abs=1e-5)
    assert sorted(p["param"] for p in results["policies"] if p["method"] == "leenet") == list(ALPHAS)
    assert {"data", "backbone", "heads", "gates", "evaluate"} <= results["timings"].keys()
    assert results["routed_check"]["matches_simulation"] is True
    return results


@torch.no_grad()
def check_reload(out: Path, results: dict, dataset: str, data_dir: Path, image_size: int) -> None:
    """model.pt, rebuilt from its spec alone, routes the test split exactly as the run did."""
    spec = read_checkpoint(out / "model.pt")["spec"]
    net = load_checkpoint(out / "model.pt")
    assert spec["arch"] == results["backbone"]["name"] and net.exit_names == [e["name"] for e in results["exits"]]
    splits = data.load_dataset(dataset, data_dir=data_dir, calib_size=12, image_size=image_size,
                               mean=spec["mean"], std=spec["std"], channels=spec["input_shape"][0])
    hits, counts, total = 0, torch.zeros(net.num_exits), 0
    for x, y in data.make_loader(splits.test, 16, train=False):
        logits, exit_index = net(x)
        hits += int((logits.argmax(-1) == y).sum())
        counts += torch.bincount(exit_index, minlength=net.num_exits).float()
        total += len(y)
    routed = results["routed_check"]
    assert hits / total == pytest.approx(routed["accuracy"], abs=1e-9)
    assert (counts / total).tolist() == pytest.approx(routed["exit_fractions"], abs=1e-9)


# ---------------------------------------------------------------- the setups

@pytest.fixture(scope="module")
def cli_run(disk, tmp_path_factory) -> Path:
    """ResNet-50 (224-px torchvision model at 32 px) on the CIFAR-10 archive, through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "cifar10-resnet50"
    argv = ["run", "--dataset", "cifar10", "--data-dir", str(disk["cifar10"]), "--arch", "resnet50",
            "--image-size", "32", "--out", str(out), *CLI_FAST]
    assert main(argv) == 0
    return out


def test_cli_resnet50_on_the_cifar10_archive(cli_run: Path, disk) -> None:
    results = check_results(cli_run, dataset="cifar10", arch="resnet50", exits=("layer1", "layer2", "layer3"))
    assert results["dataset_info"]["image_shape"] == [3, 32, 32]
    assert results["dataset_info"]["num_train"] + results["dataset_info"]["num_calib"] == 50
    check_reload(cli_run, results, "cifar10", disk["cifar10"], 32)


def test_a_run_is_reused_as_backbone_weights(cli_run: Path, disk, tmp_path: Path) -> None:
    """``--weights run/model.pt`` loads the trained backbone and skips backbone training."""
    out = tmp_path / "reuse"
    argv = ["run", "--dataset", "cifar10", "--data-dir", str(disk["cifar10"]), "--arch", "resnet50",
            "--image-size", "32", "--out", str(out), "--weights", str(cli_run / "model.pt"),
            *CLI_FAST[2:]]  # no --epochs: weights are used as they are
    assert main(argv) == 0
    before = torch.load(cli_run / "model.pt", weights_only=True)["backbone_state"]
    after = torch.load(out / "model.pt", weights_only=True)["backbone_state"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    old, new = (json.loads((d / "results.json").read_text()) for d in (cli_run, out))
    assert new["backbone"]["accuracy"] == old["backbone"]["accuracy"]
    assert "backbone" in new["timings"] and new["config"]["model"]["weights"].endswith("model.pt")


SETUPS = [  # (dataset key, registry dataset, arch, image size)
    pytest.param("cifar100", "cifar100", "densenet121", 32, id="densenet121-cifar100"),
    pytest.param("imagenette", "imagenette", "vgg11_bn", 32, id="vgg11_bn-imagenette"),
    pytest.param("imagenette", "imagenette", "vgg11", 32, id="vgg11-imagenette", marks=pytest.mark.slow),
    pytest.param("cifar10_extracted", "cifar10", "resnet50_cifar", 16, id="resnet50_cifar-cifar10-folder"),
    pytest.param("cifar100", "cifar100", "densenet121_cifar", 16, id="densenet121_cifar-cifar100"),
    pytest.param("cifar10", "cifar10", "vgg11_bn_cifar", 32, id="vgg11_bn_cifar-cifar10"),
    pytest.param("folder", "folder", "vgg11_cifar", 32, id="vgg11_cifar-folder"),
]


@pytest.mark.parametrize("key,dataset,arch,size", SETUPS)
def test_setup_end_to_end(key: str, dataset: str, arch: str, size: int, disk, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(config_for(dataset, disk[key], out, arch=arch, image_size=size), log=lambda _: None)
    exits = zoo.get_backbone_info(arch).default_exits
    results = check_results(out, dataset=dataset, arch=arch, exits=exits)
    info = results["dataset_info"]
    assert info["image_shape"] == [3, size, size]
    assert info["num_classes"] == {"cifar10": 10, "cifar100": 100, "imagenette": 3, "folder": 3}[dataset]
    check_reload(out, results, dataset, disk[key], size)


def test_imagenette_class_names_are_words(disk) -> None:
    splits = data.load_dataset("imagenette", data_dir=disk["imagenette"], calib_size=3, image_size=32)
    assert splits.spec.class_names == ("tench", "English springer", "cassette player")
    assert splits.spec.mean == pytest.approx((0.485, 0.456, 0.406))  # folder data: ImageNet statistics


# ---------------------------------------------------------------- weights options

def test_plain_state_dict_weights_are_used_as_is(disk, tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = zoo.build_backbone("resnet50", num_classes=10).state_dict()
    torch.save(state, tmp_path / "resnet50.pth")
    out = tmp_path / "run"
    config = config_for("cifar10", disk["cifar10"], out, arch="resnet50", image_size=32,
                        weights=str(tmp_path / "resnet50.pth"), epochs=0)
    run(config, log=lambda _: None)
    saved = torch.load(out / "model.pt", weights_only=True)["backbone_state"]
    assert all(torch.equal(saved[k], v) for k, v in state.items())


@pytest.fixture(scope="module")
def transfer_run(disk, tmp_path_factory) -> tuple[dict, dict]:
    """``--transfer`` from a 1000-class file (as torchvision's ImageNet weights fetched by hand) on CIFAR-10.

    Returns:
        The file's state dict and the saved run's backbone state.
    """
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(4)
    state = zoo.build_backbone("resnet50", num_classes=1000).state_dict()
    torch.save(state, root / "imagenet.pth")
    config = config_for("cifar10", disk["cifar10"], root / "run", arch="resnet50", image_size=32,
                        weights=str(root / "imagenet.pth"), transfer=True)
    run(config, log=lambda _: None)
    return state, torch.load(root / "run" / "model.pt", weights_only=True)["backbone_state"]


def test_transfer_trains_only_the_new_classifier(transfer_run) -> None:
    state, saved = transfer_run
    assert saved["fc.weight"].shape == (10, 2048)
    params = {name for name, _ in zoo.build_backbone("resnet50", num_classes=10).named_parameters()}
    frozen = [k for k in params if not k.startswith("fc.")]
    assert all(torch.equal(saved[k], state[k]) for k in frozen), "backbone parameters changed"


def test_transfer_keeps_backbone_batchnorm_statistics(transfer_run) -> None:
    state, saved = transfer_run
    changed = [k for k in state if not k.startswith("fc.") and not torch.equal(saved[k], state[k])]
    assert not changed, f"{len(changed)} backbone buffers changed, e.g. {changed[:2]}"


def test_num_classes_mismatch_is_one_line(disk, tmp_path: Path, capsys) -> None:
    argv = ["run", "--dataset", "cifar10", "--data-dir", str(disk["cifar10"]), "--arch", "resnet50",
            "--image-size", "32", "--num-classes", "7", "--out", str(tmp_path / "x"), *CLI_FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines are the progress log
    assert err.startswith("error:") and "--num-classes 10" in err
    assert not (tmp_path / "x" / "results.json").exists()


def test_weights_for_another_class_count_point_to_transfer(disk, tmp_path: Path, capsys) -> None:
    torch.save(zoo.build_backbone("resnet50", num_classes=10).state_dict(), tmp_path / "w10.pth")
    argv = ["run", "--dataset", "cifar100", "--data-dir", str(disk["cifar100"]), "--arch", "resnet50",
            "--image-size", "32", "--weights", str(tmp_path / "w10.pth"), "--out", str(tmp_path / "x"), *CLI_FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "--transfer" in err


def test_transfer_needs_weights(disk, tmp_path: Path) -> None:
    config = config_for("cifar10", disk["cifar10"], tmp_path / "x", arch="resnet50", image_size=32, transfer=True)
    with pytest.raises(LeenetError, match="--transfer .* --weights"):
        run(config, log=lambda _: None)


def test_weights_without_torchvision_enum_fail_before_loading_data(tmp_path: Path) -> None:
    config = config_for("cifar10", tmp_path / "missing", tmp_path / "x", arch="resnet50_cifar", image_size=32,
                        weights="DEFAULT")
    with pytest.raises(LeenetError, match="has no torchvision weights"):
        run(config, log=lambda _: None)


# ---------------------------------------------------------------- channels

def test_grey_images_are_repeated_for_rgb_weights() -> None:
    grey = data.load_dataset("digits", calib_size=0.2)
    rgb = data.load_dataset("digits", calib_size=0.2, channels=3)
    assert rgb.spec.in_channels == 3 and rgb.spec.mean == grey.spec.mean * 3
    x1, y1 = next(iter(data.make_loader(grey.test, 32, train=False)))
    x3, y3 = next(iter(data.make_loader(rgb.test, 32, train=False)))
    assert x3.shape == (32, 3, 8, 8) and torch.equal(y1, y3)
    assert all(torch.equal(x3[:, c:c + 1], x1) for c in range(3))


def test_rgb_images_on_grey_weights_are_one_clear_error(disk) -> None:
    with pytest.raises(DataError, match="3-channel images but the backbone's weights expect 1"):
        data.load_dataset("cifar10", data_dir=disk["cifar10"], calib_size=12, channels=1)
    with pytest.raises(DataError, match="RGB images but the backbone's weights expect 1"):
        data.load_dataset("folder", data_dir=disk["folder"], calib_size=3, channels=1)


def test_pipeline_feeds_grey_data_to_rgb_weights_file(tmp_path: Path) -> None:
    """A 3-channel state dict on the 1-channel digits: the data, not the stem, is adapted."""
    torch.manual_seed(5)
    state = zoo.build_backbone("digits_cnn", num_classes=10, in_channels=3).state_dict()
    torch.save(state, tmp_path / "rgb.pth")
    assert zoo.weights_in_channels("digits_cnn", tmp_path / "rgb.pth") == 3
    config = RunConfig(
        data=DataConfig(dataset="digits", batch_size=64), model=ModelConfig(weights=str(tmp_path / "rgb.pth")),
        train=TrainConfig(head_epochs=1, gates=GateTrainConfig(steps=20)), alphas=ALPHAS, device="cpu",
        out=str(tmp_path / "run"), timing=False, progress=False,
    )
    results = run(config, log=lambda _: None)
    assert results["dataset_info"]["image_shape"] == [3, 8, 8]
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["backbone_state"]
    assert all(torch.equal(saved[k], v) for k, v in state.items())


def test_imagenet_weights_on_another_class_count_need_training_asked_for(disk, tmp_path: Path) -> None:
    """``--weights DEFAULT`` alone would leave a random classifier: the error says to add --transfer or --epochs."""
    config = config_for("cifar10", disk["cifar10"], tmp_path / "x", arch="resnet50", image_size=32,
                        weights="DEFAULT", epochs=None)
    with pytest.raises(LeenetError, match="--transfer .* --epochs N"):
        run(config, log=lambda _: None)


def test_imagenet_weights_with_transfer_on_grey_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--weights DEFAULT --transfer`` offline, from a stand-in file in the torch hub cache.

    Grey digits are repeated to RGB and normalized with ImageNet's statistics, the pretrained
    stem is kept as it is, and only the new 10-class classifier trains.
    """
    url_name = Path(zoo.get_backbone_info("resnet50").weights_enum.DEFAULT.url).name
    torch.manual_seed(6)
    state = zoo.build_backbone("resnet50", num_classes=1000).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / url_name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    config = RunConfig(
        data=DataConfig(dataset="digits", image_size=16, batch_size=128),
        model=ModelConfig(arch="resnet50", weights="DEFAULT", transfer=True),
        train=TrainConfig(epochs=1, head_epochs=1, gates=GateTrainConfig(steps=20)), alphas=ALPHAS,
        device="cpu", out=str(tmp_path / "run"), timing=False, progress=False,
    )
    results = run(config, log=lambda _: None)
    assert results["dataset_info"]["image_shape"] == [3, 16, 16]
    spec = read_checkpoint(tmp_path / "run" / "model.pt")["spec"]
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406]) and spec["std"] == pytest.approx([0.229, 0.224, 0.225])
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["backbone_state"]
    assert saved["fc.weight"].shape == (10, 2048) and torch.equal(saved["conv1.weight"], state["conv1.weight"])
    params = [k for k, _ in zoo.build_backbone("resnet50", num_classes=10).named_parameters() if not k.startswith("fc.")]
    assert all(torch.equal(saved[k], state[k]) for k in params)
