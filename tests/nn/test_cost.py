"""Tests for leenet.cost against FLOPs counted by hand.

Convention: a convolution costs 2·Cin·Cout·k²·Hout·Wout per image, a linear layer 2·in·out;
biases, activations, pooling and the gates' feature arithmetic are not counted.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from leenet.config import GateConfig
from leenet.nn.attach import attach_exits
from leenet.nn.cost import count_flops, exit_costs, heads_needed, needed_heads, routed_costs, single_exit_costs
from leenet.nn.model import ExitNet

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


def _slow_routed_costs(cost, head_cost, gate_cost, enabled, history):
    """Exit by exit: subtract the heads and gates a routed network does not run."""
    out = []
    for j in range(len(cost)):
        saved = 0.0
        for i in range(min(j + 1, len(head_cost))):
            needed = bool(enabled[i]) or (history and bool(enabled[i + 1:].any()))
            saved += 0.0 if needed else float(head_cost[i])
            saved += 0.0 if enabled[i] else float(gate_cost[i])
        out.append(float(cost[j]) - saved)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("history", [False, True])
def test_routed_costs_match_a_loop_for_every_gate_set(history: bool) -> None:
    cost = torch.tensor([0.3, 0.55, 0.9, 1.175], dtype=torch.float64)  # heads and gates add 0.175
    head_cost = torch.tensor([0.05, 0.07, 0.04], dtype=torch.float64)
    gate_cost = torch.tensor([0.01, 0.002, 0.003], dtype=torch.float64)
    sets = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.bool)  # (8, 3)
    batched = routed_costs(cost, head_cost, gate_cost, sets, history)
    assert batched.shape == (8, 4)
    for enabled, row in zip(sets, batched):
        assert torch.allclose(row, _slow_routed_costs(cost, head_cost, gate_cost, enabled, history))
        assert torch.allclose(routed_costs(cost, head_cost, gate_cost, enabled, history), row)
    assert float(batched[0, -1]) == pytest.approx(1.0)  # no gate can fire: the plain backbone's cost
    assert torch.equal(batched[-1], cost)  # every gate on: every head runs


def test_heads_needed_with_history_keeps_heads_later_gates_read() -> None:
    enabled = torch.tensor([False, True, False, False])
    assert heads_needed(enabled, chained=False).tolist() == [False, True, False, False]
    assert heads_needed(enabled, chained=True).tolist() == [True, True, False, False]
    assert heads_needed(enabled, chained=True, final=True).tolist() == [True] * 4  # a final ensemble reads all


def test_needed_heads_on_lists_is_heads_needed() -> None:
    for chained, final in itertools.product((False, True), repeat=2):
        for flags in itertools.product((False, True), repeat=3):
            assert needed_heads(list(flags), chained, final) == heads_needed(torch.tensor(flags), chained, final).tolist()


@pytest.mark.parametrize("config", [GateConfig(hidden=8, history=h, pooled=p) for h in (False, True) for p in (False, True)]
                         + [GateConfig(hidden=8, classes=True)], ids=str)
def test_routed_cost_is_what_the_routed_forward_counts(config: GateConfig) -> None:
    """FLOPs of one image through the routed forward == the cost model, for every gate set."""
    net = attach_exits(_hand_stages(), ["a", "b"], input_shape=IN_SHAPE, num_classes=CLASSES, gate_config=config).eval()
    x = torch.randn(1, *IN_SHAPE)
    for a in (False, True):
        for b in (False, True):
            net.gates[0].enabled.fill_(a)
            net.gates[1].enabled.fill_(b)
            for gate in net.gates:  # a gate that is on lets nobody out: the image runs to the end
                gate.mlp[-1].bias.data.fill_(-1e4)
            flops, (_, exit_index) = count_flops(net, x)
            assert int(exit_index) == 2
            expected = float(net.routed_cost()[-1]) * int(net.backbone_flops)
            assert flops == pytest.approx(expected, rel=1e-6)
    for gate in net.gates:
        gate.enabled.fill_(False)
    assert count_flops(net, x)[0] == int(net.backbone_flops)  # all gates off: the plain backbone


def test_single_exit_costs_count_only_the_exits_own_head() -> None:
    net = attach_exits(_hand_stages(), ["a", "b"], input_shape=IN_SHAPE, num_classes=CLASSES,
                       gate_config=GateConfig(hidden=8))
    single = single_exit_costs(net.cost, net.head_cost, net.gate_cost)
    x = torch.zeros(1, *IN_SHAPE)
    h, total = x, 0
    for i, stage in enumerate(net.stages):
        flops, h = count_flops(stage, h)
        total += flops
        head = count_flops(net.heads[i], h)[0] if i < len(net.heads) else 0
        assert float(single[i]) == pytest.approx((total + head) / int(net.backbone_flops))
    assert float(single[-1]) == pytest.approx(1.0)


def test_attach_exits_fills_head_costs() -> None:
    net = attach_exits(_hand_stages(), ["a", "b"], input_shape=IN_SHAPE, num_classes=CLASSES,
                       gate_config=GateConfig(hidden=8))
    assert net.head_cost.tolist() == pytest.approx([h / sum(STAGE_FLOPS) for h in _head_flops("pool")])
    assert net.gate_cost.tolist() == pytest.approx([g / sum(STAGE_FLOPS) for g in _gate_flops(GateConfig(hidden=8))])
    assert float(net.cost[-1]) == pytest.approx(1.0 + float(net.head_cost.sum() + net.gate_cost.sum()))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_attention_is_counted_on_its_math_path() -> None:
    """MultiheadAttention's inference fast path hides its matmuls from the counter."""
    model = _Attention().eval()
    x = torch.randn(1, 9, 16)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    flops, _ = count_flops(model, x)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath  # restored
    tokens, dim = 9, 16
    projections = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim  # in_proj, out_proj
    attention = 2 * (2 * tokens * tokens * dim)  # q @ k^T and p @ v over all heads
    assert flops == projections + attention + 2 * 16 * 3
