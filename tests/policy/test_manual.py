"""Tests for leenet.policy.manual: gates set by a confidence threshold or by exit shares."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from leenet import GateConfig, LeenetError, attach_exits
from leenet.policy import first_exit
from leenet.policy.manual import set_gates, set_gates_by_share

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, make_tiny_cnn

CONFIGS = [GateConfig(), GateConfig(hidden=0), GateConfig(history=True, pooled=True, classes=True)]


def _net(config: GateConfig, threshold: float = 0.5):
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       gate_config=config, threshold=threshold)
    with torch.no_grad():  # heads that are not all alike, so confidences spread
        for i, head in enumerate(net.heads):
            head.fc.weight.mul_(4.0 * (i + 1))
    return net.eval()


def _max_prob(net, x: Tensor) -> Tensor:
    with torch.no_grad():
        return net.forward_all(x).logits[:, :-1].softmax(-1).amax(-1)  # (N, E-1)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("net_threshold", [0.5, 0.8])
def test_set_gates_exits_at_the_first_confident_head(config: GateConfig, net_threshold: float,
                                                      tiny_input: Tensor) -> None:
    net = _net(config, net_threshold)
    p = _max_prob(net, tiny_input)
    level = float(p.median())
    set_gates(net, level)
    expected = first_exit(p >= level)
    with torch.no_grad():
        _, exit_index = net(tiny_input)
    assert torch.equal(exit_index, expected)
    assert len(set(exit_index.tolist())) > 1  # a real mix


def test_per_exit_thresholds_and_switched_off_exits(tiny_input: Tensor) -> None:
    net = _net(GateConfig())
    p = _max_prob(net, tiny_input)
    levels = [float(p[:, 1].quantile(0.7)), float(p[:, 2].quantile(0.5))]
    set_gates(net, [math.inf, *levels])
    assert net.enabled_exits().tolist() == [False, True, True]
    with torch.no_grad():
        _, exit_index = net(tiny_input)
    expected = first_exit(torch.stack([torch.zeros_like(p[:, 0], dtype=torch.bool), p[:, 1] >= levels[0],
                                       p[:, 2] >= levels[1]], 1))
    assert torch.equal(exit_index, expected) and not (exit_index == 0).any()


@pytest.mark.parametrize("shares", [[0.25, 0.25, 0.25], [0.5, 0.0, 0.1], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
def test_set_gates_by_share_splits_the_sample_batch(shares: list[float], tiny_input: Tensor) -> None:
    net = _net(GateConfig(history=True))
    levels = set_gates_by_share(net, tiny_input, shares)
    with torch.no_grad():
        _, exit_index = net(tiny_input)
    counts = torch.bincount(exit_index, minlength=net.num_exits).tolist()
    assert counts[:-1] == [round(s * len(tiny_input)) for s in shares]
    assert [math.isinf(t) for t in levels] == [s == 0 for s in shares]


@pytest.mark.parametrize("call, match", [
    (lambda net, x: set_gates(net, 1.5), r"in \(0, 1\]"),
    (lambda net, x: set_gates(net, [0.5, 0.5]), r"one value per early exit \(3\), got 2"),
    (lambda net, x: set_gates_by_share(net, x, [0.6, 0.6, 0.0]), "summing to at most 1"),
    (lambda net, x: set_gates_by_share(net, x, [-0.1, 0.2, 0.0]), "fractions >= 0"),
])
def test_bad_settings_are_refused_in_one_line(call, match: str, tiny_input: Tensor) -> None:
    with pytest.raises(LeenetError, match=match) as info:
        call(_net(GateConfig()), tiny_input)
    assert "\n" not in str(info.value)
