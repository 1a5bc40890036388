"""Cascaded heads and exit ensembles (issue 18): routing, costs, fitting and training follow them.

Each check compares against a slow reference written out per sample or per exit here.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.nn.attach import attach_exits
from leenet.nn.combine import Cascade, ExitEnsemble, ensemble_for, fit_ensemble, make_cascade
from leenet.nn.cost import CostModel, heads_needed
from leenet.nn.model import ExitNet
from leenet.policy.simulate import first_exit
from leenet.train import train_heads

from conftest import INPUT_SHAPE, NUM_CLASSES, explicit_stages, make_tiny_cnn, mix_exits_


def _linked_net(cascade: str, ensemble: str | None, final: bool, config: GateConfig, seed: int = 0) -> ExitNet:
    """A tiny network with random cascade links and a random ensemble (non-trivial weights)."""
    gen = torch.Generator().manual_seed(seed)
    net = attach_exits(explicit_stages(make_tiny_cnn()), input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       head="pool", gate_config=config, cascade=cascade)  # costed
    if net.cascade is not None:
        for link in net.cascade.links:
            link.weight.data = torch.randn(link.weight.shape, generator=gen) * 0.5
    if ensemble is not None:
        ens = ExitEnsemble(net.num_exits, NUM_CLASSES, ensemble, final=final)
        ens.weight.copy_(torch.rand(ens.weight.shape, generator=gen).tril() + torch.eye(net.num_exits))
        ens.bias.copy_(torch.randn(ens.bias.shape, generator=gen) * 0.3)
        if not final:
            ens.weight[-1] = torch.eye(net.num_exits)[-1]
            ens.bias[-1] = 0
        net.set_ensemble(ens)
    return net.eval()


def _reference_outputs(net: ExitNet, x: Tensor) -> Tensor:
    """Every exit's output (B, E, C), written out exit by exit from the formulas in leenet.nn.combine."""
    with torch.no_grad():
        h, raw = x, []
        for i, stage in enumerate(net.stages):
            h = stage(h)
            if i == net.num_exits - 1:
                raw.append(h)
                break
            own = net.heads[i](h)
            if net.cascade is not None and i > 0:
                own = own + raw[-1] @ net.cascade.links[i - 1].weight.T
            raw.append(own)
        raw = torch.stack(raw, 1)
        if net.ensemble is None:
            return raw
        out = []
        for i in range(net.num_exits):
            if i == net.num_exits - 1 and not net.ensemble.final:
                out.append(raw[:, i])
                continue
            terms = [net.ensemble.weight[i, j] * raw[:, j].log_softmax(-1) for j in range(i + 1)]
            out.append(sum(terms) + net.ensemble.bias[i])
        return torch.stack(out, 1)


LINKS = [("off", "geometric", True), ("off", "linear", False), ("detach", None, False), ("grad", "geometric", True),
         ("detach", "linear", False)]


@pytest.mark.parametrize("cascade,ensemble,final", LINKS)
@pytest.mark.parametrize("history", [False, True])
def test_routing_equals_compute_all_and_the_reference(cascade, ensemble, final, history, tiny_input: Tensor) -> None:
    net = mix_exits_(_linked_net(cascade, ensemble, final, GateConfig(hidden=8, history=history)), tiny_input, 0.5)
    with torch.no_grad():
        out = net.forward_all(tiny_input)
        batch_logits, batch_exits = net(tiny_input)
        ones = [net(tiny_input[k:k + 1]) for k in range(len(tiny_input))]
    torch.testing.assert_close(out.logits, _reference_outputs(net, tiny_input), atol=1e-5, rtol=1e-5)
    expected = first_exit(out.gate_p >= net.threshold)
    assert set(expected.tolist()) == set(range(net.num_exits))  # every exit is taken
    assert torch.equal(batch_exits, expected)
    assert torch.equal(torch.cat([e for _, e in ones]), expected)
    chosen = out.logits[torch.arange(len(tiny_input)), expected]
    torch.testing.assert_close(batch_logits, chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([lo for lo, _ in ones]), chosen, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cascade,ensemble,final", LINKS)
@pytest.mark.parametrize("off", [(0,), (2,), (0, 2), (0, 1, 2)])
def test_disabled_gates_run_the_heads_later_exits_read(cascade, ensemble, final, off, tiny_input: Tensor) -> None:
    net = mix_exits_(_linked_net(cascade, ensemble, final, GateConfig(hidden=8, history=False)), tiny_input, 0.5)
    for i in off:
        net.gates[i].enabled.fill_(False)
    calls = [0] * len(net.heads)
    for i, head in enumerate(net.heads):
        head.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    for i in range(len(net.gates)):
        net.gates[i].mlp[-1].bias.data.fill_(-1e4)  # nobody leaves: every needed head runs once
    with torch.no_grad():
        logits, exits = net(tiny_input[:1])
    needed = heads_needed(torch.tensor([i not in off for i in range(3)]), True, net.final_reads_heads).tolist()
    assert calls == [int(n) for n in needed]
    with torch.no_grad():
        full = net.forward_all(tiny_input[:1]).logits[:, -1]
    assert int(exits) == net.num_exits - 1
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)  # the final exit's own (ensembled) output
    routed = net.routed_cost()
    assert float(routed[-1]) > 1.0 if net.final_reads_heads else float(routed[-1]) >= 1.0


def test_costs_follow_what_each_exit_reads() -> None:
    cost, heads, gates = torch.tensor([0.3, 0.6, 1.3]), torch.tensor([0.1, 0.1]), torch.tensor([0.05, 0.05])
    plain = CostModel(cost, heads, gates)
    linked = CostModel(cost, heads, gates, linked=True)
    final = CostModel(cost, heads, gates, linked=True, final_heads=True)
    only_second = torch.tensor([False, True])
    # plain: head 0 skipped with its gate; linked: exit 1 reads head 0, so it runs
    torch.testing.assert_close(plain.routed(only_second), cost - torch.tensor([0.15, 0.15, 0.15]))
    torch.testing.assert_close(linked.routed(only_second), cost - torch.tensor([0.05, 0.05, 0.05]))
    none = torch.tensor([False, False])
    torch.testing.assert_close(linked.routed(none)[-1], torch.tensor(1.0))  # nobody reads the heads
    torch.testing.assert_close(final.routed(none)[-1], torch.tensor(1.2))  # the final ensemble reads both
    # the network cut at an exit: its heads so far, no gates
    torch.testing.assert_close(plain.single_exits(), torch.tensor([0.25, 0.4, 1.0]))
    torch.testing.assert_close(linked.single_exits(), torch.tensor([0.25, 0.5, 1.0]))
    torch.testing.assert_close(final.single_exits(), torch.tensor([0.25, 0.5, 1.2]))


def test_cascade_links_are_counted_in_the_head_flops() -> None:
    plain = attach_exits(make_tiny_cnn(), ["block1", "block2", "block3"], input_shape=INPUT_SHAPE,
                         num_classes=NUM_CLASSES)
    linked = attach_exits(make_tiny_cnn(), ["block1", "block2", "block3"], input_shape=INPUT_SHAPE,
                          num_classes=NUM_CLASSES, cascade="detach")
    link_flops = 2 * NUM_CLASSES * NUM_CLASSES / float(plain.backbone_flops)
    expected = plain.head_cost + torch.tensor([0.0, link_flops, link_flops])
    torch.testing.assert_close(linked.head_cost, expected.to(linked.head_cost.dtype))


def test_untrained_links_are_the_plain_heads(tiny_input: Tensor) -> None:
    plain = _linked_net("off", None, False, GateConfig())
    linked = ExitNet.from_stages(explicit_stages(make_tiny_cnn()), num_classes=NUM_CLASSES,
                                 example_input=torch.zeros(1, *INPUT_SHAPE), head="pool", cascade="grad").eval()
    linked.heads.load_state_dict(plain.heads.state_dict())
    linked.set_ensemble(ExitEnsemble(linked.num_exits, NUM_CLASSES))  # identity weights, zero bias
    with torch.no_grad():
        a, b = plain.forward_all(tiny_input).logits, linked.forward_all(tiny_input).logits
    # an identity ensemble answers with log-probabilities: the same predictions and confidences
    torch.testing.assert_close(b, a.log_softmax(-1), atol=1e-5, rtol=1e-5)


def _toy_exits(n: int = 600, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Raw logits of 3 exits that each see the label through independent noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    signal = F.one_hot(labels, 5).float()
    raw = torch.stack([2.0 * signal + torch.randn(n, 5, generator=gen) * s for s in (1.5, 1.5, 1.0)], 1)
    return raw, labels


@pytest.mark.parametrize("kind", ["geometric", "linear"])
def test_fit_ensemble_beats_each_exit_alone(kind: str) -> None:
    raw, labels = _toy_exits()
    ens = fit_ensemble(ExitEnsemble(3, 5, kind, final=True), raw, labels)
    with torch.no_grad():
        combined = ens(raw)
    ce = [float(F.cross_entropy(combined[:, i], labels)) for i in range(3)]
    alone = [float(F.cross_entropy(raw[:, i], labels)) for i in range(3)]
    assert ce[0] <= alone[0] + 1e-3  # the first exit has only itself (and a bias) to work with
    assert ce[1] < alone[1] - 0.05 and ce[2] < alone[2] - 0.05  # independent noise averages out
    assert torch.equal(ens.weight, ens.weight.tril())  # an exit reads no later head
    if kind == "geometric":
        assert bool((ens.weight >= 0).all())


def test_ensemble_without_the_final_exit_keeps_the_backbone() -> None:
    raw, labels = _toy_exits()
    ens = fit_ensemble(ExitEnsemble(3, 5, "linear", final=False), raw, labels)
    with torch.no_grad():
        assert torch.equal(ens(raw)[:, -1], raw[:, -1])


def test_ensemble_final_is_decided_out_of_fold() -> None:
    raw, labels = _toy_exits(n=2000)
    assert ensemble_for(raw, labels, "geometric").final  # independent exits: the ensemble wins
    solo = raw.clone()
    solo[:, :2] = torch.randn(2000, 2, 5)  # early exits that know nothing: nothing to gain
    solo[:, 2] = F.one_hot(labels, 5).float() * 5  # a backbone that is always right
    assert not ensemble_for(solo, labels, "geometric").final


def test_bad_settings_are_refused() -> None:
    with pytest.raises(LeenetError, match="cascade"):
        make_cascade("sideways", 3, 10)
    with pytest.raises(LeenetError, match="ensemble"):
        ExitEnsemble(3, 10, "off")
    net = _linked_net("off", None, False, GateConfig())
    with pytest.raises(LeenetError, match="exits"):
        net.set_ensemble(ExitEnsemble(5, NUM_CLASSES))


def test_cascade_detach_stops_the_gradient_only_in_training() -> None:
    cascade = Cascade(3, 4, detach=True)
    for link in cascade.links:
        link.weight.data.fill_(1.0)
    prev = torch.randn(2, 4, requires_grad=True)
    cascade.train()
    cascade(1, torch.zeros(2, 4), prev).sum().backward()
    assert prev.grad is None
    grad = Cascade(3, 4, detach=False)
    for link in grad.links:
        link.weight.data.fill_(1.0)
    grad.train()(1, torch.zeros(2, 4), prev).sum().backward()
    assert prev.grad is not None and bool(prev.grad.abs().sum() > 0)


@pytest.mark.parametrize("cascade,distill", list(itertools.product(["off", "detach", "grad"], [0.0, 0.7])))
def test_train_heads_trains_links_and_distils(cascade: str, distill: float, tiny_input: Tensor) -> None:
    torch.manual_seed(0)
    net = ExitNet.from_stages(explicit_stages(make_tiny_cnn()), num_classes=NUM_CLASSES,
                              example_input=torch.zeros(1, *INPUT_SHAPE), head="pool", cascade=cascade)
    stages_before = {k: v.clone() for k, v in net.stages.state_dict().items()}
    labels = torch.randint(0, NUM_CLASSES, (len(tiny_input),))
    history = train_heads(net, lambda: [(tiny_input, labels)] * 4, steps_per_epoch=4, epochs=3, progress=False,
                          lr=1e-2, distill=distill)
    assert history[-1] < history[0]
    assert all(torch.equal(v, net.stages.state_dict()[k]) for k, v in stages_before.items())  # frozen
    if net.cascade is not None:
        assert any(bool(link.weight.abs().sum() > 0) for link in net.cascade.links)  # the links learned


def test_distillation_pulls_heads_towards_the_backbone(tiny_input: Tensor) -> None:
    """With distill=1 the labels play no part: heads trained on random labels still agree with the backbone."""
    def agreement(distill: float) -> float:
        torch.manual_seed(0)
        net = ExitNet.from_stages(explicit_stages(make_tiny_cnn()), num_classes=NUM_CLASSES,
                                  example_input=torch.zeros(1, *INPUT_SHAPE), head="pool")
        noise = torch.randint(0, NUM_CLASSES, (len(tiny_input),), generator=torch.Generator().manual_seed(1))
        train_heads(net, lambda: [(tiny_input, noise)] * 8, steps_per_epoch=8, epochs=5, progress=False, lr=2e-2,
                    distill=distill, temperature=1.0)
        with torch.no_grad():
            logits = net.forward_all(tiny_input).logits
        return float((logits[:, -2].argmax(-1) == logits[:, -1].argmax(-1)).float().mean())

    assert agreement(1.0) > agreement(0.0) + 0.2


def test_bad_distillation_is_refused(tiny_input: Tensor) -> None:
    net = ExitNet.from_stages(explicit_stages(make_tiny_cnn()), num_classes=NUM_CLASSES,
                              example_input=torch.zeros(1, *INPUT_SHAPE))
    with pytest.raises(LeenetError, match="distillation"):
        train_heads(net, lambda: [], steps_per_epoch=1, epochs=1, progress=False, distill=1.5)


def test_cached_outputs_combined_are_what_the_network_gives(tiny_input: Tensor) -> None:
    """Caching the heads' own logits, then combining them, equals the ensembled network's forward_all."""
    from leenet.policy.cache import collect_outputs

    net = _linked_net("detach", "geometric", True, GateConfig(hidden=8))
    ensemble = net.ensemble
    net.set_ensemble(None)
    labels = torch.randint(0, NUM_CLASSES, (len(tiny_input),))
    raw = collect_outputs(net, [(tiny_input, labels)], progress=False)
    net.set_ensemble(ensemble)
    with torch.no_grad():
        expected = net.forward_all(tiny_input).logits
    combined = raw.combined(ensemble)
    torch.testing.assert_close(combined.logits, expected, atol=1e-5, rtol=1e-5)
    assert combined.logits.device.type == "cpu" and torch.equal(combined.labels, labels)
