"""Tests for leenet.cost against FLOPs counted by hand.

Convention: a convolution costs 2·Cin·Cout·k²·Hout·Wout per image, a linear layer 2·in·out;
biases, activations, pooling and the gates' feature arithmetic are not counted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leenet.build import attach_exits
from leenet.cost import count_flops, exit_costs
from leenet.heads import GateConfig
from leenet.model import ExitNet

IN_SHAPE = (2, 6, 6)
CLASSES = 5


def _hand_stages() -> list[nn.Module]:
    """(2, 6, 6) → conv3×3 → (4, 6, 6) → conv3×3/2 → (3, 3, 3) → flatten, linear → (5,)."""
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(1), nn.Linear(27, CLASSES)),
    ]


def _conv(cin: int, cout: int, k: int, h: int, w: int) -> int:
    return 2 * cin * cout * k * k * h * w


def _linear(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def _gate(n_in: int, hidden: int) -> int:
    return _linear(n_in, hidden) + _linear(hidden, 1) if hidden else _linear(n_in, 1)


STAGE_FLOPS = [_conv(2, 4, 3, 6, 6), _conv(4, 3, 3, 3, 3), _linear(27, CLASSES)]
CHANNELS = [4, 3]  # channels at the two early exits


def _head_flops(kind: str) -> list[int]:
    if kind == "pool":
        return [_linear(c, CLASSES) for c in CHANNELS]
    if kind == "flatten":
        return [_linear(4 * 6 * 6, CLASSES), _linear(3 * 3 * 3, CLASSES)]
    # sdn: 3×3 conv to max(32, C) channels (stride 1 on maps <= 8 px), then linear on avg+max pool
    return [_conv(4, 32, 3, 6, 6) + _linear(64, CLASSES), _conv(3, 32, 3, 3, 3) + _linear(64, CLASSES)]


def _gate_flops(config: GateConfig) -> list[int]:
    dims = [3 + (2 * i if config.history else 0) + (CHANNELS[i] if config.pooled else 0) for i in range(2)]
    return [_gate(d, config.hidden) for d in dims]


@pytest.mark.parametrize("head", ["pool", "flatten", "sdn"])
@pytest.mark.parametrize(
    "config", [GateConfig(hidden=8), GateConfig(hidden=0, history=False), GateConfig(hidden=8, pooled=True)], ids=str
)
def test_exit_costs_match_hand_count(head: str, config: GateConfig) -> None:
    net = ExitNet.from_stages(_hand_stages(), num_classes=CLASSES, example_input=torch.zeros(1, *IN_SHAPE),
                              head=head, gate_config=config)
    costs = exit_costs(net, torch.zeros(4, *IN_SHAPE))  # only one image is counted

    extra = [h + g for h, g in zip(_head_flops(head), _gate_flops(config))]
    expected = [
        STAGE_FLOPS[0] + extra[0],
        STAGE_FLOPS[0] + STAGE_FLOPS[1] + extra[0] + extra[1],
        sum(STAGE_FLOPS) + sum(extra),
    ]
    assert costs.backbone_flops == sum(STAGE_FLOPS)
    assert list(costs.exit_flops) == expected
    relative = costs.relative
    assert torch.allclose(relative, torch.tensor(expected, dtype=torch.float64) / sum(STAGE_FLOPS))
    assert float(relative[-1]) > 1.0
    assert bool((relative[1:] > relative[:-1]).all())


def test_count_flops_of_one_conv() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    flops, out = count_flops(conv, torch.zeros(1, 3, 7, 7))
    assert flops == _conv(3, 5, 3, 7, 7)
    assert out.shape == (1, 5, 7, 7)


def test_exit_costs_restore_training_mode() -> None:
    net = ExitNet.from_stages(_hand_stages(), num_classes=CLASSES, example_input=torch.zeros(1, *IN_SHAPE))
    net.train()
    exit_costs(net, torch.zeros(1, *IN_SHAPE))
    assert net.training and all(m.training for m in net.modules())


def test_attach_exits_fills_cost_buffers() -> None:
    net = attach_exits(_hand_stages(), ["a", "b"], input_shape=IN_SHAPE, num_classes=CLASSES,
                       gate_config=GateConfig(hidden=8))
    extra = [h + g for h, g in zip(_head_flops("pool"), _gate_flops(GateConfig(hidden=8)))]
    assert net.exit_names == ["a", "b", "final"]
    assert int(net.backbone_flops) == sum(STAGE_FLOPS)
    assert float(net.cost[0]) == pytest.approx((STAGE_FLOPS[0] + extra[0]) / sum(STAGE_FLOPS))
    assert float(net.cost[-1]) == pytest.approx((sum(STAGE_FLOPS) + sum(extra)) / sum(STAGE_FLOPS))
    assert bool((net.cost[1:] > net.cost[:-1]).all()) and float(net.cost[-1]) > 1.0


def test_costs_of_the_tiny_cnn_increase(tiny_stages: list[nn.Module]) -> None:
    net = attach_exits(tiny_stages, input_shape=(3, 16, 16), num_classes=5)
    cost = net.cost
    assert cost.shape == (4,)
    assert bool((cost[1:] > cost[:-1]).all())
    assert 1.0 < float(cost[-1]) < 1.2  # pooled heads and small gates add little
