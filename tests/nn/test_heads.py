"""Tests for leenet.heads: head output shapes, confidence and gate features, gates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from leenet.config import HEAD_KINDS, GateConfig
from leenet.errors import LeenetError
from leenet.nn.cost import count_flops
from leenet.nn.gates import Gate, confidence_features, gate_features, gate_input_dim, make_gates
from leenet.nn.heads import FeatureLayout, global_pool, make_head


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("shape", [(8, 16, 16), (4, 5, 7), (16, 1, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_head_gives_batch_by_classes(kind: str, shape: tuple[int, ...], batch: int) -> None:
    head = make_head(kind, shape, 6).eval()
    logits = head(torch.randn(batch, *shape, generator=_gen(batch)))
    assert logits.shape == (batch, 6)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["pool", "flatten"])
def test_pool_and_flatten_heads_accept_vectors(kind: str) -> None:
    head = make_head(kind, (12,), 4)
    assert head(torch.randn(5, 12)).shape == (5, 4)


def test_sdn_head_rejects_vectors() -> None:
    with pytest.raises(LeenetError, match="4-D"):
        make_head("sdn", (12,), 4)


def test_unknown_head_lists_valid_kinds() -> None:
    with pytest.raises(LeenetError, match="pool, sdn, deep, flatten"):
        make_head("mlp", (8, 4, 4), 3)


def test_heads_are_row_independent_in_eval() -> None:
    """A head on a sub-batch gives the rows it gives in the full batch (routing relies on it)."""
    x = torch.randn(6, 8, 9, 9, generator=_gen(1))
    for kind in HEAD_KINDS:
        head = make_head(kind, (8, 9, 9), 3).eval()
        assert torch.allclose(head(x)[2:4], head(x[2:4]), atol=1e-6)


def test_global_pool() -> None:
    x = torch.randn(2, 3, 4, 5, generator=_gen(2))
    assert torch.allclose(global_pool(x), x.mean((2, 3)))
    assert torch.equal(global_pool(x[:, :, 0, 0]), x[:, :, 0, 0])


def _manual_confidence(row: Tensor) -> list[float]:
    p = sorted((math.exp(v) for v in row.tolist()), reverse=True)
    p = [v / sum(p) for v in p]
    entropy = -sum(v * math.log(v) for v in p if v > 0) / math.log(max(len(p), 2))
    second = p[1] if len(p) > 1 else p[0]
    return [p[0], entropy, p[0] - second]


@pytest.mark.parametrize("classes", [1, 2, 10])
def test_confidence_features_match_manual(classes: int) -> None:
    logits = torch.randn(7, classes, generator=_gen(classes)) * 2
    logits[0] = 0.0  # uniform
    got = confidence_features(logits)
    assert got.shape == (7, 3)
    expected = torch.tensor([_manual_confidence(row) for row in logits], dtype=torch.float64)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    if classes > 1:
        assert got[0].tolist() == pytest.approx([1 / classes, 1.0, 0.0], abs=1e-6)


def test_confidence_features_of_a_certain_prediction() -> None:
    got = confidence_features(torch.tensor([[50.0, 0.0, 0.0]]))
    assert got[0].tolist() == pytest.approx([1.0, 0.0, 1.0], abs=1e-6)


CONFIGS = [GateConfig(history=h, pooled=p, hidden=w, classes=c)
           for h in (False, True) for p in (False, True) for w in (0, 8) for c in (False, True)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("exit_index", [0, 1, 3])
def test_gate_features_width_is_gate_input_dim(config: GateConfig, exit_index: int) -> None:
    gen = _gen(exit_index)
    logits = torch.randn(4, 5, generator=gen)
    prev = torch.randn(4, exit_index, 5, generator=gen)
    pooled = torch.randn(4, 11, generator=gen)
    features = gate_features(logits, prev, pooled, config)
    assert features.shape == (4, gate_input_dim(exit_index, 11, config, num_classes=5))
    gate = make_gates(exit_index + 1, [11] * (exit_index + 1), config, num_classes=5)[exit_index]
    assert gate(features).shape == (4,)


def test_gate_features_content() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    prev = torch.tensor([[[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, 4.0]]])
    pooled = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    config = GateConfig(history=True, pooled=True)
    got = gate_features(logits, prev, pooled, config)
    prev_max = prev.softmax(-1).amax(-1)
    assert torch.allclose(got[:, :3], confidence_features(logits))
    assert torch.allclose(got[:, 3:5], prev_max)
    assert got[:, 5:7].tolist() == [[0.0, 1.0], [1.0, 1.0]]  # agreement with this exit's argmax
    assert torch.equal(got[:, 7:], pooled)


def test_gate_features_with_classes_add_probabilities_and_the_predicted_class() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    prev = torch.tensor([[[0.0, 2.0, 0.0]], [[0.0, 0.0, 1.0]]])
    pooled = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = gate_features(logits, prev, pooled, GateConfig(history=True, pooled=True, classes=True))
    assert got.shape == (2, gate_input_dim(1, 2, GateConfig(history=True, pooled=True, classes=True), 3))
    torch.testing.assert_close(got[:, 5:8], logits.softmax(-1))
    assert got[:, 8:11].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert torch.equal(got[:, 11:], pooled)


def test_gates_that_see_classes_need_the_class_count() -> None:
    with pytest.raises(LeenetError, match="num_classes"):
        make_gates(2, [4, 4], GateConfig(classes=True))


def test_gate_features_need_pooled_when_configured() -> None:
    with pytest.raises(LeenetError, match="pooled"):
        gate_features(torch.randn(2, 3), torch.randn(2, 0, 3), None, GateConfig(pooled=True))


def test_gate_config_rejects_negative_width() -> None:
    with pytest.raises(LeenetError, match="hidden"):
        GateConfig(hidden=-1)


def test_gate_standardizes_with_stored_stats() -> None:
    torch.manual_seed(0)
    gate = Gate(3, hidden=0)
    inputs = torch.randn(50, 3, generator=_gen(3)) * torch.tensor([1.0, 10.0, 100.0]) + 7.0
    gate.fit_input_stats(inputs)
    assert torch.allclose(gate.input_mean, inputs.mean(0))
    assert torch.allclose(gate.input_std, inputs.std(0))
    linear = gate.mlp[0]
    expected = torch.sigmoid(linear((inputs - inputs.mean(0)) / inputs.std(0)).squeeze(-1))
    assert torch.allclose(gate(inputs), expected, atol=1e-6)
    assert {"input_mean", "input_std"} <= set(gate.state_dict())


def test_gate_stats_survive_constant_and_single_inputs() -> None:
    gate = Gate(2, hidden=4)
    gate.fit_input_stats(torch.ones(10, 2))
    assert torch.isfinite(gate(torch.ones(3, 2))).all()
    gate.fit_input_stats(torch.randn(1, 2))  # one calibration sample: std undefined
    assert torch.isfinite(gate.input_std).all()
    assert torch.isfinite(gate(torch.randn(3, 2))).all()


def test_layouts_pool_over_space_or_tokens_never_channels() -> None:
    maps = torch.randn(2, 8, 5, 5, generator=_gen(3))
    assert torch.allclose(FeatureLayout("nchw").pool(maps), maps.mean((2, 3)))
    last = maps.permute(0, 2, 3, 1)  # (B, H, W, C)
    assert torch.allclose(FeatureLayout("nhwc").pool(last), maps.mean((2, 3)), atol=1e-6)
    tokens = torch.randn(2, 17, 24, generator=_gen(4))
    assert torch.allclose(FeatureLayout("tokens", 1).pool(tokens), tokens[:, 1:].mean(1))
    assert torch.allclose(global_pool(tokens), tokens.mean(1))  # by rank: a sequence of tokens
    grid = FeatureLayout("tokens", 1).to_maps(tokens)  # (B, 24, 4, 4), patch tokens row by row
    assert grid.shape == (2, 24, 4, 4) and torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 4 + 2])


@pytest.mark.parametrize("shape, layout, width", [
    ((7, 7, 96), "nhwc", 96), ((17, 24), None, 24), ((16, 24), "tokens", 24), ((8, 3, 3), None, 8),
])
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_heads_read_the_layout(shape: tuple[int, ...], layout: str | None, width: int, kind: str) -> None:
    head = make_head(kind, shape, 5, layout).eval()
    assert head(torch.randn(3, *shape, generator=_gen(5))).shape == (3, 5)
    assert head.pool(torch.randn(3, *shape, generator=_gen(6))).shape == (3, width)
    if kind == "pool":
        assert head.fc.in_features == width
    if kind in ("sdn", "deep"):
        assert head.reduce[0].in_channels == width


def test_guessed_token_layouts_find_the_class_token() -> None:
    assert FeatureLayout.guess((17, 24)) == FeatureLayout("tokens", 1)
    assert FeatureLayout.guess((16, 24)) == FeatureLayout("tokens", 0)
    assert FeatureLayout.of(["tokens", 2]) == FeatureLayout("tokens", 2)


def test_layout_errors_are_one_line() -> None:
    with pytest.raises(LeenetError, match="square grid") as info:
        make_head("sdn", (18, 24), 3, FeatureLayout("tokens", 0))
    assert "\n" not in str(info.value)
    with pytest.raises(LeenetError, match=r"unknown feature layout 'hwc' \(valid: nchw, nhwc, tokens, flat\)"):
        make_head("pool", (4, 4, 8), 3, "hwc")
    with pytest.raises(LeenetError, match=r"are not maps \(C, H, W\)"):
        make_head("pool", (17, 24), 3, "nchw")


@pytest.mark.parametrize("shape, maps", [((24, 28, 28), [14, 7, 4]), ((48, 14, 14), [7, 4]), ((96, 7, 7), [4]),
                                         ((8, 4, 4), [4]), ((300, 9, 9), [5, 3])])
@pytest.mark.parametrize("kind", ["sdn", "deep"])
def test_conv_heads_blocks_and_flops_by_hand(kind: str, shape: tuple[int, ...], maps: list[int]) -> None:
    """The deep head strides 2 until the map is at most 4 wide (the sdn head: one block, strided
    on maps over 8); every block has the sdn head's width, and the FLOPs are the convolutions'
    and the linear layer's, counted by hand."""
    head = make_head(kind, shape, 10).eval()
    if kind == "sdn":
        maps = [(shape[1] + 1) // 2 if shape[1] > 8 else shape[1]]
    x = torch.randn(2, *shape, generator=_gen(7))
    sizes, h = [], x
    for layer in head.reduce:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes == maps and head(x).shape == (2, 10)
    width = max(32, min(shape[0], 256))
    ins = [shape[0]] + [width] * (len(maps) - 1)
    expected = sum(2 * c * width * 9 * m * m for c, m in zip(ins, maps)) + 2 * 2 * width * 10
    assert count_flops(head, x[:1])[0] == expected
