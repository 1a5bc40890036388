"""The routed forward's fast paths (issue 16) route exactly as the general one and compute-all.

A batch of one takes ``ExitNet._route_one`` (one decision per exit, nothing to compact); a
batch in which nobody or everybody leaves at an exit skips the compaction. Each is checked
against the batched path, against ``forward_all``, and for the operators it must not run.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from leenet.config import GateConfig
from leenet.evaluate.timing import PlainBackbone
from leenet.nn.cost import heads_needed
from leenet.nn.model import ExitNet

from conftest import INPUT_SHAPE, NUM_CLASSES, HostSyncs, assert_routes_like, explicit_stages, make_tiny_cnn, mix_exits_

GATE_CONFIGS = [GateConfig(hidden=8, history=h, pooled=p) for h in (False, True) for p in (False, True)]
GATE_CONFIGS += [GateConfig(hidden=8, classes=True), GateConfig(hidden=0, history=True, pooled=True, classes=True)]


class _Ops(TorchDispatchMode):
    """Counts the operators dispatched, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def count(self, *names: str) -> int:
        return sum(n in names for n in self.names)


def _net(config: GateConfig, head: str = "pool") -> ExitNet:
    stages = explicit_stages(make_tiny_cnn())
    return ExitNet.from_stages(stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                               head=head, gate_config=config).eval()


def _one_by_one(net: ExitNet, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        rows = [net(x[k:k + 1]) for k in range(len(x))]
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def _assert_same_routing(net: ExitNet, x: Tensor) -> Tensor:
    """Batch of one and the batched path both route like compute-all, on every sample of ``x``."""
    logits_1, exit_1 = _one_by_one(net, x)
    with torch.no_grad():
        logits_b, exit_b = net(x)
        out = net.forward_all(x)
    assert exit_1.dtype == torch.long and exit_1.shape == (len(x),)
    assert_routes_like(out, net.threshold, exit_b, logits_b, rtol=1e-5)
    return torch.from_numpy(assert_routes_like(out, net.threshold, exit_1, logits_1, rtol=1e-5))


@pytest.mark.parametrize("config", GATE_CONFIGS, ids=str)
@pytest.mark.parametrize("head", ["pool", "sdn", "deep"])
def test_batch_of_one_routes_like_the_batch(config: GateConfig, head: str, tiny_input: Tensor) -> None:
    net = mix_exits_(_net(config, head), tiny_input, 0.5)
    exits = _assert_same_routing(net, tiny_input)
    assert set(exits.tolist()) == set(range(net.num_exits))  # every exit is taken by some sample


@pytest.mark.parametrize("config", GATE_CONFIGS, ids=str)
@pytest.mark.parametrize("off", [(0,), (1,), (0, 2), (0, 1, 2)])
def test_batch_of_one_with_disabled_gates(config: GateConfig, off: tuple[int, ...], tiny_input: Tensor) -> None:
    net = mix_exits_(_net(config), tiny_input, 0.5)
    for i in off:
        net.gates[i].enabled.fill_(False)
    exits = _assert_same_routing(net, tiny_input[:32])
    assert not any(exits.eq(i).any() for i in off)
    calls = [0] * len(net.heads)
    for i, head in enumerate(net.heads):
        head.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        net.gates[i].mlp[-1].bias.data.fill_(-1e4)  # nobody leaves: every needed head runs once
    with torch.no_grad():
        net(tiny_input[:1])
    needed = heads_needed(torch.tensor([i not in off for i in range(3)]), config.history).tolist()
    assert calls == [int(n) for n in needed]


def test_exit_plan_is_heads_needed() -> None:
    for history, flags in itertools.product((False, True), itertools.product((False, True), repeat=3)):
        net = _net(GateConfig(history=history))
        for gate, on in zip(net.gates, flags):
            gate.enabled.fill_(on)
        enabled, run_head = net.exit_plan()
        assert enabled == list(flags)
        assert run_head == heads_needed(torch.tensor(flags), history).tolist()


@pytest.mark.parametrize("batch", [1, 8])
def test_nobody_leaving_is_the_plain_backbone_without_compaction(batch: int, tiny_input: Tensor) -> None:
    net = _net(GateConfig(history=True, pooled=True, classes=True))
    net.threshold = 1.0  # sigmoid of these gates stays below 1: nobody leaves
    x = tiny_input[:batch]
    with torch.no_grad(), _Ops() as ops:
        logits, exits = net(x)
    assert exits.eq(net.num_exits - 1).all()
    assert torch.equal(logits, PlainBackbone(net)(x))
    assert ops.count("aten.index", "aten.index_put_", "aten.sort") == 0  # nothing compacted


@pytest.mark.parametrize("batch", [1, 8])
def test_everyone_leaving_at_the_first_exit_returns_its_logits(batch: int, tiny_input: Tensor) -> None:
    net = _net(GateConfig(history=True))
    net.threshold = 1e-9  # every gate fires
    x = tiny_input[:batch]
    with torch.no_grad(), _Ops() as ops:
        logits, exits = net(x)
    assert exits.eq(0).all() and exits.shape == (batch,)
    assert torch.equal(logits, net.heads[0](net.stages[0](x)))
    assert ops.count("aten.index", "aten.index_put_", "aten.sort") == 0
    assert ops.count("aten.convolution") == 1  # only stage 0 ran (pooled-linear heads)


def test_everyone_left_by_a_middle_exit_stops_there(tiny_input: Tensor) -> None:
    net = mix_exits_(_net(GateConfig(history=True)), tiny_input, 0.5)
    net.gates[1].mlp[-1].bias.data.fill_(1e4)  # the rest all leave at exit 1
    assert set(_assert_same_routing(net, tiny_input).tolist()) == {0, 1}
    calls = []
    net.stages[2].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        net(tiny_input)
    assert not calls  # nothing left to run after exit 1


def test_batch_of_one_reads_one_decision_per_gate_reached(tiny_input: Tensor) -> None:
    net = _net(GateConfig(history=True, pooled=True, classes=True))
    net.threshold = 1.0  # nobody leaves: every gate decides
    with torch.no_grad(), HostSyncs() as syncs:
        net(tiny_input[:1])
    assert syncs.count == len(net.gates)
    net.gates[2].enabled.fill_(False)
    net.threshold = 1e-9  # the first gate lets it out
    with torch.no_grad(), HostSyncs() as syncs, _Ops() as ops:
        net(tiny_input[:1])
    assert syncs.count == 1
    assert ops.count("aten.sort", "aten.index", "aten.index_put_", "aten.arange") == 0
