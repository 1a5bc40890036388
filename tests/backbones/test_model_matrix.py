"""Bring your own model: torchvision, timm and hand-written backbones, end to end.

Each case is built through :func:`leenet.build_backbone` (``tv:``, ``timm:``, ``module:factory``)
or given as an explicit list of stages, with random weights and random BatchNorm statistics,
at a small input size. For each: the routed forward equals ``forward_all`` at batch 1, 7 and
32 with mixed exits; costs increase and the backbone's FLOPs match torch's counter on the
math path; ``save_checkpoint(path, net)`` alone round-trips to identical outputs; a batch of
the wrong shape is refused in one line.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from leenet import (
    GateConfig,
    LeenetError,
    attach_exits,
    build_backbone,
    get_backbone_info,
    load_checkpoint,
    save_checkpoint,
)
from leenet.nn.cost import math_attention

from conftest import assert_routes_like, mix_exits_, randomize_batchnorm_

NUM_CLASSES = 6
BATCHES = (1, 7, 32)


class _Tokens(nn.Module):
    """Patch embedding and a class token: (B, 3, 16, 16) → (B, 1 + 16, 24)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 24, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 24) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 16, 24)
        return torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)


class _Block(nn.Module):
    """A pre-norm residual MLP over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(24), nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 24))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(x)


class _ClassTokenHead(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.block = _Block()
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x)[:, 0])


def tiny_vit_stages(num_classes: int = NUM_CLASSES) -> list[nn.Module]:
    """A hand-written token model as explicit stages: tokens, one block, one block and the head."""
    return [_Tokens(), _Block(), _ClassTokenHead(num_classes)]


# name -> (input size, gates see pooled features, layout of the first exit). Random gates on pooled
# features magnify float noise (inputs divided by tiny spreads): a few cases keep them.
CASES = {
    "tv:resnet18": (64, True, "nchw"),
    "tv:mobilenet_v3_small": (64, False, "nchw"),
    "tv:efficientnet_b0": (64, False, "nchw"),
    "tv:regnet_y_400mf": (64, False, "nchw"),
    "tv:convnext_tiny": (64, False, "nchw"),
    "tv:shufflenet_v2_x0_5": (64, False, "nchw"),
    "tv:swin_t": (64, False, "nhwc"),  # pooled gates on channels-last maps: see test_pooled_gates_on_channels_last
    "timm:resnet18": (64, False, "nchw"),
    "timm:efficientnet_b0": (64, False, "nchw"),
    "timm:vit_tiny_patch16_224": (32, True, "tokens"),
    "conftest:TinyCNN": (16, True, "nchw"),
    "stages:TinyViT": (16, True, "tokens"),
}
SLOW_CASES = {"tv:vit_b_16": (64, True, "tokens"), "tv:densenet121": (64, True, "nchw")}
ALL = [*CASES, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_CASES)]


@functools.cache
def _case(name: str) -> tuple[nn.Module | list[nn.Module], object, Tensor]:
    """(backbone or stage list, ExitNet with mixed exits, a (32, 3, S, S) batch), built once per name."""
    size, pooled, _ = {**CASES, **SLOW_CASES}[name]
    if name.startswith("timm:"):
        pytest.importorskip("timm")  # the optional extra leenet[timm]
    torch.manual_seed(0)
    if name.startswith("stages:"):
        backbone, exits = tiny_vit_stages(), None
    else:
        backbone = build_backbone(name, num_classes=NUM_CLASSES, image_size=size)  # left in training mode
        exits = list(get_backbone_info(name).default_exits)
    net = attach_exits(backbone, exits, input_shape=(3, size, size), num_classes=NUM_CLASSES,
                       gate_config=GateConfig(history=True, pooled=pooled))
    randomize_batchnorm_(net)  # eval mode; BatchNorm statistics that are not an identity
    x = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1))
    mix_exits_(net, x, 0.5)
    return backbone, net, x


def _assert_routes_like_compute_all(net, x: Tensor) -> Tensor:
    with torch.no_grad():
        logits, exit_index = net(x)
        out = net.forward_all(x)
    # Deep networks compute the shrunken batch with other kernel blockings (oneDNN picks them by batch size
    # and thread count): their logits move by more than the tiny test networks' do.
    return torch.from_numpy(assert_routes_like(out, net.threshold, exit_index, logits, atol=1e-4, rtol=1e-4))


@pytest.mark.parametrize("name", ALL)
def test_routed_forward_matches_compute_all(name: str) -> None:
    _, net, x = _case(name)
    assert net.heads[0].layout.kind == {**CASES, **SLOW_CASES}[name][2]
    for batch in BATCHES:
        exit_index = _assert_routes_like_compute_all(net, x[:batch])
    assert set(exit_index.tolist()) == set(range(net.num_exits))  # the mix is real at 32
    with pytest.raises(LeenetError, match="expected a batch of shape") as info:
        net(x[:, :, 1:, 1:])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ALL)
def test_costs_increase_and_match_the_flop_counter(name: str) -> None:
    backbone, net, x = _case(name)
    assert bool((net.cost[1:] > net.cost[:-1]).all()) and float(net.cost[-1]) > 1.0
    plain = nn.Sequential(*backbone) if isinstance(backbone, list) else backbone
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), math_attention(), counter:
        plain.eval()(x[:1])
    assert int(net.backbone_flops) == counter.get_total_flops()


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_round_trip_needs_only_the_network(name: str, tmp_path: Path) -> None:
    backbone, net, x = _case(name)
    save_checkpoint(tmp_path / "model.pt", net)
    if name.startswith("stages:"):
        torch.manual_seed(5)
        again = load_checkpoint(tmp_path / "model.pt", backbone=tiny_vit_stages())
    else:
        again = load_checkpoint(tmp_path / "model.pt")  # rebuilt by name, in training mode, then loaded
    with torch.no_grad():
        (logits, exits), (logits2, exits2) = net(x), again(x)
    assert torch.equal(exits, exits2) and torch.allclose(logits, logits2, atol=1e-6)
    assert again.heads[0].layout == net.heads[0].layout


def test_vit_flops_count_attention() -> None:
    """The MultiheadAttention fast path hides attention from the counter; exits count it."""
    backbone = build_backbone("tv:vit_b_16", num_classes=NUM_CLASSES, image_size=32).eval()
    net = attach_exits(backbone, ["encoder.layers.encoder_layer_5"], input_shape=(3, 32, 32),
                       num_classes=NUM_CLASSES)
    fast = FlopCounterMode(display=False)
    with torch.no_grad(), fast:
        backbone(torch.zeros(1, 3, 32, 32))
    linear_only = fast.get_total_flops()
    tokens, dim, layers = 5, 768, 12
    attention = layers * 2 * (2 * tokens * tokens * dim)  # q @ k^T and p @ v, per layer
    assert int(net.backbone_flops) > linear_only + attention - 1
    assert net.heads[0].layout.prefix_tokens == 1


@pytest.mark.parametrize("name", ["tv:efficientnet_b0", "timm:efficientnet_b0"])
def test_stages_follow_train_and_eval(name: str) -> None:
    """Attached in training mode, the network still infers like the backbone in eval mode, and
    stochastic depth / BatchNormAct follow .train() (they are kept whole, not traced)."""
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    backbone = build_backbone(name, num_classes=NUM_CLASSES)
    randomize_batchnorm_(backbone).train()
    net = attach_exits(backbone, list(get_backbone_info(name).default_exits), input_shape=(3, 64, 64),
                       num_classes=NUM_CLASSES)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        net.eval()
        assert torch.allclose(net.forward_all(x).logits[:, -1], backbone.eval()(x), atol=1e-5)
        net.train()
        torch.manual_seed(3)
        train_logits = net.forward_all(x).logits[:, -1]
        backbone.train()
        torch.manual_seed(3)
        assert torch.allclose(train_logits, backbone(x), atol=1e-5)
        assert not torch.allclose(train_logits, backbone.eval()(x), atol=1e-3)


def test_pooled_gates_on_channels_last() -> None:
    backbone = build_backbone("tv:swin_t", num_classes=NUM_CLASSES).eval()
    net = attach_exits(backbone, ["features.1", "features.3"], input_shape=(3, 64, 64), num_classes=NUM_CLASSES,
                       gate_config=GateConfig(pooled=True))
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mix_exits_(net, x, 0.5)
    _assert_routes_like_compute_all(net, x)


def test_timm_vit_traces_with_its_optional_arguments() -> None:
    pytest.importorskip("timm")
    backbone = build_backbone("timm:vit_tiny_patch16_224", num_classes=NUM_CLASSES, image_size=32)
    net = attach_exits(backbone, ["blocks.5"], input_shape=(3, 32, 32), num_classes=NUM_CLASSES)
    assert net.heads[0].layout.prefix_tokens == 1 and net.heads[0].fc.in_features == 192


def test_sdn_heads_read_tokens_on_their_grid() -> None:
    pytest.importorskip("timm")
    backbone = build_backbone("timm:vit_tiny_patch16_224", num_classes=NUM_CLASSES, image_size=32)
    net = attach_exits(backbone, ["blocks.5"], input_shape=(3, 32, 32), num_classes=NUM_CLASSES, head="sdn")
    assert net.heads[0].reduce[0].in_channels == 192
    assert net.forward_all(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 2, NUM_CLASSES)


@pytest.mark.parametrize("name, match", [
    ("tv:resnet19", r"unknown torchvision classifier 'resnet19' \(did you mean tv:resnet18"),
    ("timm:vit_tiny_patch16", r"unknown timm model 'vit_tiny_patch16' \(did you mean timm:vit_tiny_patch16_"),
    ("nosuchmodule:build", r"cannot import nosuchmodule"),
    ("conftest:TinyCNNN", r"conftest has no callable 'TinyCNNN' \(did you mean conftest:TinyCNN\?\)"),
    ("resnet5", r"did you mean 'resnet50'\?"),
])
def test_unknown_models_suggest_close_names_in_one_line(name: str, match: str) -> None:
    with pytest.raises(LeenetError, match=match) as info:
        build_backbone(name, num_classes=NUM_CLASSES)
    assert "\n" not in str(info.value)


def _failing_factory(num_classes: int) -> nn.Module:
    raise RuntimeError(f"no weights for {num_classes} classes\nsecond line")


def test_a_failing_factory_says_so_in_one_line() -> None:
    with pytest.raises(LeenetError, match=r"factory test_model_matrix:_failing_factory failed when called with "
                                          r"num_classes=6 \(RuntimeError: no weights for 6 classes second line\)"
                       ) as info:
        build_backbone("test_model_matrix:_failing_factory", num_classes=NUM_CLASSES)
    assert "\n" not in str(info.value)


def test_default_exits_follow_the_model_structure() -> None:
    pytest.importorskip("timm")
    expected = {
        "tv:resnet18": ("layer1", "layer2", "layer3"),
        "tv:mobilenet_v3_small": ("features.1", "features.3", "features.8"),
        "tv:convnext_tiny": ("features.1", "features.3", "features.5"),
        "tv:regnet_y_400mf": ("trunk_output.block1", "trunk_output.block2", "trunk_output.block3"),
        "tv:vit_b_16": tuple(f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8)),
        "timm:efficientnet_b0": ("blocks.1", "blocks.2", "blocks.4"),
        "timm:vit_tiny_patch16_224": ("blocks.2", "blocks.5", "blocks.8"),
    }
    for name, exits in expected.items():
        assert get_backbone_info(name).default_exits == exits, name


def test_timm_weights_fail_in_one_line_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no retries against an unreachable hub
    with pytest.raises(LeenetError, match=r"cannot load timm weights resnet18") as info:
        build_backbone("timm:resnet18", num_classes=NUM_CLASSES, weights="pretrained")
    assert "\n" not in str(info.value)
    with pytest.raises(LeenetError, match=r"timm has no weights 'nosuchtag' for resnet18 \(valid: pretrained, a1_in1k"):
        build_backbone("timm:resnet18", num_classes=NUM_CLASSES, weights="nosuchtag")
    assert math.isfinite(float(get_backbone_info("timm:resnet18").input_size))


class _ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 4, stride=4)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).permute(0, 2, 3, 1)  # (B, 4, 4, 12)


class _NormPoolHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(12)
        self.fc = nn.Linear(12, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x).mean((1, 2)))


def test_channels_last_maps_are_detected_from_the_next_layer() -> None:
    """Explicit stages carry no model to ask: a LayerNorm over the last axis after the cut says NHWC."""
    net = attach_exits([_ChannelsLast(), _NormPoolHead()], input_shape=(3, 16, 16), num_classes=NUM_CLASSES)
    assert net.heads[0].layout.kind == "nhwc" and net.heads[0].fc.in_features == 12
    given = attach_exits([_ChannelsLast(), _NormPoolHead()], input_shape=(3, 16, 16), num_classes=NUM_CLASSES,
                         layout=["nchw"])
    assert given.heads[0].fc.in_features == 4  # the user's word wins
