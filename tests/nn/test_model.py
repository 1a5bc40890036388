"""Tests for leenet.model: the routed forward agrees exactly with the compute-all path.

Gates get random weights with biases set so that, on the test batch, about half of the
samples still running leave at every gate: exits are mixed, so a routing bug (a row
written to the wrong place, history or pooled features taken from the wrong rows) shows.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.evaluate.timing import PlainBackbone
from leenet.nn.attach import attach_exits
from leenet.nn.model import ExitNet
from leenet.policy.simulate import first_exit

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, HostSyncs, explicit_stages, make_tiny_cnn, mix_exits_

GATE_CONFIGS = [GateConfig(hidden=8, history=h, pooled=p) for h in (False, True) for p in (False, True)]
GATE_CONFIGS.append(GateConfig(hidden=8, classes=True))
BATCH_SIZES = (1, 2, 7, 64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_routing_matches(net: ExitNet, x: Tensor) -> Tensor:
    """Routed forward == compute-all path on ``x``; returns the exit indices."""
    with torch.no_grad():
        logits, exit_index = net(x)
        out = net.forward_all(x)
    expected_index = first_exit(out.gate_p >= net.threshold)
    assert exit_index.dtype == torch.long and exit_index.shape == (len(x),)
    assert logits.shape == (len(x), out.logits.shape[-1])
    assert torch.equal(exit_index, expected_index)
    chosen = out.logits[torch.arange(len(x)), expected_index]
    assert torch.equal(logits.argmax(-1), chosen.argmax(-1))
    assert torch.allclose(logits, chosen, atol=1e-5, rtol=1e-5)
    return exit_index


def _tiny_net(config: GateConfig, head: str = "pool") -> ExitNet:
    stages = explicit_stages(make_tiny_cnn())
    return ExitNet.from_stages(stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                               head=head, gate_config=config).eval()


@pytest.mark.parametrize("config", GATE_CONFIGS, ids=str)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_routed_forward_matches_compute_all(config: GateConfig, threshold: float, tiny_input: Tensor) -> None:
    net = mix_exits_(_tiny_net(config), tiny_input, threshold)
    for batch in BATCH_SIZES:
        exit_index = assert_routing_matches(net, tiny_input[:batch])
        if batch == 64:  # the mix is nontrivial: every exit is used
            assert set(exit_index.tolist()) == set(range(net.num_exits))


@pytest.mark.parametrize("head", ["sdn", "flatten"])
def test_routed_forward_matches_with_other_heads(head: str, tiny_input: Tensor) -> None:
    net = mix_exits_(_tiny_net(GateConfig(history=True, pooled=True), head), tiny_input, 0.5)
    exit_index = assert_routing_matches(net, tiny_input)
    assert set(exit_index.tolist()) == set(range(net.num_exits))
    assert_routing_matches(net, tiny_input[:7])


def test_routed_forward_matches_on_unseen_inputs(tiny_input: Tensor) -> None:
    net = mix_exits_(_tiny_net(GateConfig(history=True, pooled=True)), tiny_input, 0.5)
    fresh = torch.randn(64, *INPUT_SHAPE, generator=_gen(99))
    assert len(set(assert_routing_matches(net, fresh).tolist())) > 1


def test_everyone_leaves_first_or_last(tiny_input: Tensor) -> None:
    net = _tiny_net(GateConfig())
    net.threshold = 0.0  # every gate fires
    assert assert_routing_matches(net, tiny_input[:7]).eq(0).all()
    net.threshold = 1.5  # no gate fires
    assert assert_routing_matches(net, tiny_input[:7]).eq(net.num_exits - 1).all()
    logits, _ = net(tiny_input[:7])
    assert torch.allclose(logits, net.stages[-1](net.stages[2](net.stages[1](net.stages[0](tiny_input[:7])))))


def test_empty_batch(tiny_input: Tensor) -> None:
    net = _tiny_net(GateConfig(history=True, pooled=True))
    with torch.no_grad():
        logits, exit_index = net(tiny_input[:0])
        out = net.forward_all(tiny_input[:0])
    assert logits.shape == (0, NUM_CLASSES) and exit_index.shape == (0,)
    assert out.logits.shape == (0, 4, NUM_CLASSES) and out.gate_p.shape == (0, 3)


def _has_no_lazy_parts(net: nn.Module) -> bool:
    lazy = any(isinstance(m, LazyModuleMixin) for m in net.modules())
    uninitialized = any(isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters())
    return not lazy and not uninitialized


@pytest.mark.parametrize("head", ["pool", "sdn", "deep", "flatten"])
def test_every_parameter_exists_after_construction(head: str) -> None:
    net = _tiny_net(GateConfig(hidden=8, history=True, pooled=True), head)
    assert _has_no_lazy_parts(net)
    assert len(net.stages) == 4 and len(net.heads) == 3 and len(net.gates) == 3
    count = sum(p.numel() for p in net.parameters())
    net(torch.randn(3, *INPUT_SHAPE))
    assert sum(p.numel() for p in net.parameters()) == count  # forward adds nothing


def test_from_stages_restores_stage_modes() -> None:
    stages = explicit_stages(make_tiny_cnn())
    for stage in stages:
        stage.train()
    ExitNet.from_stages(stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE))
    assert all(stage.training for stage in stages)


def test_constructor_checks_counts() -> None:
    stages = explicit_stages(make_tiny_cnn())
    with pytest.raises(LeenetError, match="E stages, E-1 heads"):
        ExitNet(stages, [nn.Identity()], [nn.Identity()], exit_names=["a", "final"], gate_config=GateConfig())


def test_bad_input_size_names_the_fix() -> None:
    stages = explicit_stages(make_tiny_cnn())
    with pytest.raises(LeenetError, match="image size and channel count"):
        ExitNet.from_stages(stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, 1, 16, 16))


def test_class_count_must_match_the_backbone() -> None:
    stages = explicit_stages(make_tiny_cnn())
    with pytest.raises(LeenetError, match=f"not {NUM_CLASSES + 1} class logits"):
        ExitNet.from_stages(stages, num_classes=NUM_CLASSES + 1, example_input=torch.zeros(1, *INPUT_SHAPE))


def test_attach_exits_on_traced_backbone(tiny_input: Tensor) -> None:
    backbone = make_tiny_cnn()
    net = attach_exits(backbone, EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES).eval()
    assert net.exit_names == [*EXIT_POINTS, "final"]
    assert _has_no_lazy_parts(net)
    state, original = net.backbone_state_dict(), backbone.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    with torch.no_grad():
        out = net.forward_all(tiny_input)
        assert torch.allclose(out.logits[:, -1], backbone(tiny_input), atol=1e-6)
    mix_exits_(net, tiny_input, 0.5)
    assert len(set(assert_routing_matches(net, tiny_input).tolist())) == net.num_exits


def test_backbone_state_dict_refuses_clashing_stage_names() -> None:
    """Hand-cut nn.Sequential stages all have keys like ``0.weight``: they must not overwrite."""
    net = _tiny_net(GateConfig())
    with pytest.raises(LeenetError, match="backbone"):
        net.backbone_state_dict()


# Real backbones from the zoo, small inputs and few classes so they run on a CPU in seconds.
ZOO_CASES = {
    "digits_cnn": dict(in_channels=1, size=8),
    "small_resnet": dict(in_channels=3, size=16),
    "resnet50": dict(in_channels=3, size=32),
    "vgg11_bn": dict(in_channels=3, size=32),
    "vgg11_bn_cifar": dict(in_channels=3, size=32),
    "densenet121": dict(in_channels=3, size=32),
}


@pytest.mark.parametrize("arch", list(ZOO_CASES))
def test_routed_forward_matches_on_zoo_backbones(arch: str) -> None:
    zoo = pytest.importorskip("leenet.backbones")
    case = ZOO_CASES[arch]
    torch.manual_seed(0)
    backbone = zoo.build_backbone(arch, num_classes=4, in_channels=case["in_channels"]).eval()
    input_shape = (case["in_channels"], case["size"], case["size"])
    exits = list(zoo.get_backbone_info(arch).default_exits)
    configs = GATE_CONFIGS if arch in ("digits_cnn", "small_resnet") else [GateConfig(history=True, pooled=True)]
    x = torch.randn(64, *input_shape, generator=_gen(3))
    for config in configs:
        net = attach_exits(backbone, exits, input_shape=input_shape, num_classes=4, gate_config=config).eval()
        assert _has_no_lazy_parts(net)
        mix_exits_(net, x, 0.5)
        for batch in BATCH_SIZES:
            exit_index = assert_routing_matches(net, x[:batch])
            if batch == 64:
                assert set(exit_index.tolist()) == set(range(net.num_exits))
    state, original = net.backbone_state_dict(), backbone.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in original)


@pytest.mark.parametrize("config", GATE_CONFIGS, ids=str)
@pytest.mark.parametrize("off", [(0,), (1,), (2,), (0, 2), (1, 2), (0, 1, 2)])
def test_disabled_gates_route_like_compute_all_and_skip_unneeded_heads(
    config: GateConfig, off: tuple[int, ...], tiny_input: Tensor
) -> None:
    net = mix_exits_(_tiny_net(config), tiny_input, 0.5)
    for i in off:
        net.gates[i].enabled.fill_(False)
    for batch in (1, 7, 64):
        exit_index = assert_routing_matches(net, tiny_input[:batch])
        assert not any(exit_index.eq(i).any() for i in off)
    calls = [0] * len(net.heads)
    for i, head in enumerate(net.heads):
        head.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        net.gates[i].mlp[-1].bias.data.fill_(-1e4)  # gates that are on let nobody out: all run to the end
    with torch.no_grad():
        net(tiny_input)
    last_on = max((i for i in range(len(net.gates)) if i not in off), default=-1)
    needed = [i not in off or (config.history and i < last_on) for i in range(len(net.heads))]
    assert calls == [int(n) for n in needed]
    if len(off) == len(net.gates):  # every gate off: the plain backbone, bit for bit
        with torch.no_grad():
            assert torch.equal(net(tiny_input)[0], PlainBackbone(net)(tiny_input))


def test_gate_decision_threshold_must_be_a_probability() -> None:
    stages = explicit_stages(make_tiny_cnn())
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(LeenetError, match="threshold"):
            ExitNet.from_stages(stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                                threshold=bad)


def test_routed_forward_syncs_once_per_gate(tiny_input: Tensor) -> None:
    """On a GPU every host sync stalls the launch queue: the routed pass may read back one
    count per enabled gate that samples reach (plus the enabled flags, read with tolist),
    whatever the gate inputs (``F.one_hot`` used to add two checks per gate)."""
    net = mix_exits_(_tiny_net(GateConfig(hidden=8, history=True, pooled=True, classes=True)), tiny_input, 0.5)
    with torch.no_grad(), HostSyncs() as syncs:
        net(tiny_input)
    assert syncs.count == len(net.gates)
    net.gates[1].enabled.fill_(False)
    with torch.no_grad(), HostSyncs() as syncs:
        net(tiny_input)
    assert syncs.count == len(net.gates) - 1


@pytest.mark.parametrize("bad, match", [
    (torch.randn(4, 1, 16, 16), r"\(B, 3, 16, 16\)"),  # grey images into an RGB network
    (torch.randn(4, 3, 32, 32), r"\(B, 3, 16, 16\)"),  # another size than the exits were costed at
    (torch.randn(3, 16, 16), "batch dimension"),  # one image without its batch axis
    (torch.randn(4, 3, 16, 16, dtype=torch.float64), "float32"),
    (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), "float32"),
    ([[0.0]], "tensor"),
])
def test_forward_refuses_batches_it_cannot_route(bad, match: str) -> None:
    net = _tiny_net(GateConfig())
    for call in (net, net.forward_all):
        with pytest.raises(LeenetError, match=match):
            call(bad)
    assert net(torch.zeros(0, *INPUT_SHAPE))[0].shape == (0, NUM_CLASSES)  # an empty batch is fine


def test_attach_exits_refuses_malformed_arguments() -> None:
    with pytest.raises(LeenetError, match="not a string"):
        attach_exits(make_tiny_cnn(), "block1", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    for shape in ((3, -1, 16), (3.0, 16, 16), 16, ()):
        with pytest.raises(LeenetError, match="input_shape"):
            attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=shape, num_classes=NUM_CLASSES)
    with pytest.raises(LeenetError, match="nn.Module"):
        attach_exits([nn.Identity(), len], input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
