"""Tests for leenet.zoo: every registered backbone builds, splits and loads weights."""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from leenet.backbones.registry import BACKBONES, backbone_names, build_backbone, get_backbone_info
from leenet.backbones.weights import adapt_first_conv, classifier_parameters, replace_classifier
from leenet.errors import CheckpointError, ExitPointError, LeenetError
from leenet.nn.split import split_backbone, valid_exit_points

TORCHVISION_224 = ("resnet50", "vgg11_bn", "densenet121")


def _test_size(name: str) -> int:
    """Small inputs keep the 224-pixel models fast; every stride still leaves ≥ 1 pixel."""
    return min(get_backbone_info(name).input_size, 32)


def _channels(name: str) -> int:
    return 1 if name == "digits_cnn" else 3


def _macs(model: nn.Module, x: Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2  # the counter counts a multiply-add as 2 FLOPs


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    """Each backbone built once (random init, 7 classes, eval mode), shared by the tests."""
    torch.manual_seed(0)
    return {
        name: build_backbone(name, num_classes=7, in_channels=_channels(name)).eval()
        for name in backbone_names()
    }


@pytest.mark.parametrize("name", backbone_names())
def test_default_exits_split_into_stages_that_compose_exactly(name: str, built: dict[str, nn.Module]) -> None:
    model, info = built[name], get_backbone_info(name)
    size = _test_size(name)
    x = torch.randn(2, _channels(name), size, size)
    stages = split_backbone(model, info.default_exits)
    assert len(stages) == len(info.default_exits) + 1
    with torch.no_grad():
        h = x
        for stage in stages[:-1]:
            h = stage(h)
            assert h.dim() == 4 and h.shape[0] == 2
        out = stages[-1](h)
        assert out.shape == (2, 7)
        assert torch.equal(out, model(x))
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for s in stages for p in s.parameters()} == model_ptrs


@pytest.mark.parametrize("name", backbone_names())
def test_grey_inputs_and_class_count(name: str) -> None:
    size = get_backbone_info(name).input_size
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = build_backbone(name, num_classes=3, in_channels=1)
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 3)
    assert replace_classifier(model, 4).out_features == 4


def test_registry_entries() -> None:
    names = backbone_names()
    assert names[:2] == ["digits_cnn", "small_resnet"]
    assert {"resnet50", "vgg11_bn", "vgg11", "densenet121", "resnet50_cifar", "vgg11_bn_cifar",
            "vgg11_cifar", "densenet121_cifar"} <= set(names)
    assert BACKBONES["vgg11"].default_exits == ("features.5", "features.10", "features.15")
    assert BACKBONES["vgg11_bn"].default_exits == ("features.7", "features.14", "features.21")
    assert BACKBONES["vgg11_cifar"].default_exits == BACKBONES["vgg11"].default_exits
    for name in names:
        info = BACKBONES[name]
        assert info.imagenet_normalization == (info.weights_enum is not None)
        assert len(info.default_exits) >= 2
    with pytest.raises(LeenetError,
                       match=r"unknown backbone 'resnet5' \(did you mean 'resnet50'\? valid: digits_cnn, small_resnet, "):
        get_backbone_info("resnet5")


@pytest.mark.parametrize("name", TORCHVISION_224)
def test_macs_match_torchvision_published_ops(name: str) -> None:
    info = get_backbone_info(name)
    expected = info.weights_enum.DEFAULT.meta["_ops"] * 1e9
    with torch.device("meta"):
        model = build_backbone(name, num_classes=1000)
        measured = _macs(model, torch.zeros(1, 3, 224, 224))
    assert measured == pytest.approx(expected, rel=0.01)


def test_small_backbones_are_cheap() -> None:
    with torch.device("meta"):
        digits = build_backbone("digits_cnn", num_classes=10, in_channels=1)
        small = build_backbone("small_resnet", num_classes=10, in_channels=1)
        narrow = BACKBONES["small_resnet"].builder(10, 1, width=16)
        x28 = torch.zeros(1, 1, 28, 28)
        assert _macs(digits, torch.zeros(1, 1, 8, 8)) < 2e6
        assert 30e6 < _macs(small, x28) < 85e6
        assert _macs(narrow, x28) < _macs(small, x28) / 2  # MACs grow with width squared


def test_digits_cnn_trains_to_97_percent_in_seconds() -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    order = torch.tensor(np.random.default_rng(0).permutation(len(y)))
    train, test = order[:1400], order[1400:]
    model = build_backbone("digits_cnn", num_classes=10, in_channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.97


@pytest.mark.parametrize("key", [None, "backbone_state", "state_dict", "model_state", "module."])
def test_weights_file_round_trip(tmp_path: Path, key: str | None) -> None:
    source = build_backbone("small_resnet", num_classes=10, in_channels=1)
    state = source.state_dict()
    if key == "module.":
        payload = {f"module.{k}": v for k, v in state.items()}
    else:
        payload = state if key is None else {key: state, "spec": {"arch": "small_resnet"}}
    torch.save(payload, tmp_path / "w.pt")
    loaded = build_backbone("small_resnet", num_classes=10, in_channels=1, weights=tmp_path / "w.pt")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_weights_with_sparse_tensors(tmp_path: Path) -> None:
    state = build_backbone("small_resnet", num_classes=10, in_channels=1).state_dict()
    state["fc.weight"] = state["fc.weight"].to_sparse()
    torch.save(state, tmp_path / "sparse.pt")
    with warnings.catch_warnings():  # torch may warn that it validates the sparse tensors
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="plain dense state dict"):
            build_backbone("small_resnet", num_classes=10, in_channels=1, weights=tmp_path / "sparse.pt")


def test_weights_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        build_backbone("small_resnet", num_classes=10, in_channels=1, weights=tmp_path)


def test_mismatched_weights_name_the_fix(tmp_path: Path) -> None:
    torch.save(build_backbone("small_resnet", num_classes=10, in_channels=1).state_dict(), tmp_path / "w.pt")
    expected = (r"fc\.weight has shape \(10, 96\) in the file but \(100, 96\) in small_resnet: the file "
                r"classifies 10 classes, this model 100; add --transfer")
    with pytest.raises(CheckpointError, match=expected):
        build_backbone("small_resnet", num_classes=100, in_channels=1, weights=tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"stem\.0\.weight .* the file takes 1-channel images, this model 3"):
        build_backbone("small_resnet", num_classes=10, in_channels=3, weights=str(tmp_path / "w.pt"))
    with pytest.raises(CheckpointError, match=r"does not fit digits_cnn: \d+ missing keys \(e\.g\. block1"):
        build_backbone("digits_cnn", num_classes=10, in_channels=1, weights=tmp_path / "w.pt")


def test_unreadable_weights_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("digits_cnn", num_classes=10, weights=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"weights file .*junk.pt is not a PyTorch file .* starts with b'not '"):
        build_backbone("digits_cnn", num_classes=10, weights=tmp_path / "junk.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole module, not its state dict
    with pytest.raises(CheckpointError, match=r"holds a pickled torch.nn.modules.linear.Linear, not only tensors.*"
                                              r"model.state_dict\(\)"):
        build_backbone("digits_cnn", num_classes=10, weights=tmp_path / "pickled.pt")
    whole = (tmp_path / "pickled.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])  # a torch archive cut short
    with pytest.raises(CheckpointError, match=r"cut.pt is damaged \(PytorchStreamReader failed"):
        build_backbone("digits_cnn", num_classes=10, weights=tmp_path / "cut.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match=r"holds no state dict \(found: epoch, lr\)"):
        build_backbone("digits_cnn", num_classes=10, weights=tmp_path / "nostate.pt")


def test_transfer_loads_all_but_the_classifier(tmp_path: Path) -> None:
    source = build_backbone("small_resnet", num_classes=10, in_channels=3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_backbone(
        "small_resnet", num_classes=4, in_channels=1, weights=tmp_path / "w.pt", transfer=True
    )
    assert model.fc.out_features == 4
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert torch.allclose(model.stem[0].weight, source.stem[0].weight.sum(1, keepdim=True))


def test_weights_names_are_checked() -> None:
    with pytest.raises(LeenetError, match=r"unknown weights 'IMAGENET' for resnet50 \(valid: IMAGENET1K_V1"):
        build_backbone("resnet50", num_classes=10, weights="IMAGENET")
    with pytest.raises(LeenetError, match="resnet50_cifar has no torchvision weights"):
        build_backbone("resnet50_cifar", num_classes=10, weights="DEFAULT")
    with pytest.raises(LeenetError, match="num_classes must be a positive integer"):
        build_backbone("digits_cnn", num_classes=0)


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    pattern = r"cannot download resnet50 weights IMAGENET1K_V2 .*no network\?"
    with pytest.raises(LeenetError, match=pattern) as info:
        build_backbone("resnet50", num_classes=10, weights="DEFAULT")
    assert "\n" not in str(info.value)


def test_torchvision_weights_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = get_backbone_info("densenet121").weights_enum.DEFAULT
    with torch.device("meta"):
        shapes = build_backbone("densenet121", num_classes=1000).state_dict()
    torch.manual_seed(0)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
             for k, v in shapes.items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = build_backbone("densenet121", num_classes=10, in_channels=1, weights="DEFAULT")
    key = "features.denseblock2.denselayer3.conv1.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    assert torch.allclose(model.features.conv0.weight, state["features.conv0.weight"].sum(1, keepdim=True))
    assert model.classifier.out_features == 10


def test_classifier_helpers() -> None:
    model = build_backbone("small_resnet", num_classes=10)
    params = classifier_parameters(model)
    assert params == [model.fc.weight, model.fc.bias]
    new = replace_classifier(model, 3)
    assert model.fc is new and new.in_features == 96
    with pytest.raises(LeenetError, match="Sequential has no nn.Linear classifier"):
        classifier_parameters(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_adapt_first_conv_keeps_pretrained_kernels() -> None:
    model = build_backbone("digits_cnn", num_classes=10, in_channels=3)
    kernel = model.block1[0].weight.detach().clone()
    adapt_first_conv(model, 5, pretrained=True)
    tiled = model.block1[0].weight
    assert tiled.shape[1] == 5
    assert torch.allclose(tiled[:, :3], kernel * 3 / 5)  # tiled, and scaled to keep the response
    assert torch.allclose(tiled[:, 3:], kernel[:, :2] * 3 / 5)


def test_default_exits_are_valid_exit_points() -> None:
    with torch.device("meta"):
        for name in backbone_names():
            model = build_backbone(name, num_classes=10, in_channels=_channels(name))
            assert set(get_backbone_info(name).default_exits) <= set(valid_exit_points(model)), name
    with pytest.raises(ExitPointError, match="features.denseblock1"):
        split_backbone(model, ["features.denseblock1.denselayer2"])


def test_every_backbone_description_states_its_measured_macs() -> None:
    """`leenet backbones` quotes each network's multiply-adds at its native size: they must be the counted ones."""
    import re

    for name, info in BACKBONES.items():
        found = re.search(r"([\d.]+) ([MG]) MACs", info.description)
        assert found, f"{name}: no MACs in {info.description!r}"
        stated = float(found.group(1)) * (1e6 if found.group(2) == "M" else 1e9)
        channels = 1 if name in ("digits_cnn", "small_resnet") else 3
        x = torch.zeros(1, channels, info.input_size, info.input_size)
        measured = _macs(build_backbone(name, num_classes=10, in_channels=channels).eval(), x)
        assert stated == pytest.approx(measured, rel=0.06), name  # 1000-class heads add ~0.05 % at 224 px
