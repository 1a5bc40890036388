"""Measured costs (leenet.evaluate.latency): their form, not their speed (machines here are shared)."""

from __future__ import annotations

import pytest
import torch

from leenet.errors import LeenetError
from leenet.evaluate.latency import LatencyCosts, measure_latency, use_costs_
from leenet.nn.attach import attach_exits
from leenet.nn.cost import CostModel, routed_costs

from conftest import INPUT_SHAPE, NUM_CLASSES


def _costs() -> LatencyCosts:
    return LatencyCosts(device="cpu", batch_size=1, threads=1, backbone_seconds=10.0,
                        stage_seconds=(2.0, 3.0, 4.0, 2.0), head_seconds=(0.5, 0.5, 1.0), gate_seconds=(0.1, 0.2, 0.3))


def test_relative_costs_have_the_flops_form() -> None:
    costs = _costs()
    scale = 10.0 / 11.0  # stages timed apart, scaled to the backbone timed whole
    stages = torch.tensor([2.0, 3.0, 4.0, 2.0]) * scale
    extra = torch.tensor([0.6, 0.7, 1.3, 0.0])
    torch.testing.assert_close(costs.relative, torch.cumsum(stages + extra, 0).double() / 10.0)
    torch.testing.assert_close(costs.relative_heads, torch.tensor([0.05, 0.05, 0.1], dtype=torch.float64))
    torch.testing.assert_close(costs.relative_gates, torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64))
    off = routed_costs(costs.relative, costs.relative_heads, costs.relative_gates, torch.zeros(3, dtype=torch.bool),
                       chained=True)
    assert off[-1].item() == pytest.approx(1.0)  # every gate off: exactly the backbone
    assert set(costs.to_dict()) >= {"stage_seconds", "relative", "relative_heads", "relative_gates"}


def test_measure_latency_times_every_part(tiny_stages) -> None:
    net = attach_exits(tiny_stages, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES).train()
    costs = measure_latency(net, batch_size=2, repeats=3, warmup=1)
    assert net.training  # the mode is restored
    assert costs.batch_size == 2 and costs.device == "cpu" and costs.threads == torch.get_num_threads()
    assert len(costs.stage_seconds) == 4 and len(costs.head_seconds) == len(costs.gate_seconds) == 3
    assert all(t > 0 for t in (costs.backbone_seconds, *costs.stage_seconds, *costs.head_seconds,
                               *costs.gate_seconds))
    assert torch.all(costs.relative.diff() > 0) and costs.relative[-1] > 1.0


def test_use_costs_prices_the_exits_in_time(tiny_stages) -> None:
    net = attach_exits(tiny_stages, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    flops = net.backbone_flops.clone()
    use_costs_(net, _costs())
    model = CostModel.of(net)
    torch.testing.assert_close(model.cost, _costs().relative.float())
    torch.testing.assert_close(model.gate_cost, _costs().relative_gates.float())
    assert torch.equal(net.backbone_flops, flops)  # the absolute FLOPs stay
    for gate in net.gates:
        gate.enabled.fill_(False)
    assert net.routed_cost()[-1].item() == pytest.approx(1.0)


def test_use_costs_refuses_another_network(tiny_stages) -> None:
    net = attach_exits(tiny_stages[:2] + [torch.nn.Sequential(*tiny_stages[2:])], input_shape=INPUT_SHAPE,
                       num_classes=NUM_CLASSES)
    with pytest.raises(LeenetError, match="4 exits cannot price one of 3"):
        use_costs_(net, _costs())
