"""Tests for leenet.objective against plain loops, and for the gradient path of gate training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import GateConfig, GateTrainConfig, check_alpha
from leenet.errors import LeenetError
from leenet.nn.model import ExitNet
from leenet.policy.cache import CachedOutputs
from leenet.policy.objective import balanced_bce, exit_losses, exit_probabilities, expected_exit_loss, hard_exit_targets
from leenet.policy.simulate import first_exit
from leenet.policy.sweep import train_gates
from leenet.train import freeze_

from conftest import INPUT_SHAPE, NUM_CLASSES

ALPHAS = (0.0, 0.3, 0.75, 1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_problem(batch: int, exits: int, classes: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random gate probabilities (B, E-1), logits (B, E, C), labels (B,), increasing costs (E,)."""
    gen = _gen(seed)
    gate_p = torch.rand(batch, exits - 1, generator=gen, dtype=torch.float64)
    logits = torch.randn(batch, exits, classes, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    cost = torch.cumsum(torch.rand(exits, generator=gen, dtype=torch.float64) + 0.05, 0)
    return gate_p, logits, labels, cost / cost[-1] * 1.02


def _loop_probabilities(gate_p: Tensor) -> list[list[float]]:
    batch, gates = gate_p.shape
    probs = []
    for b in range(batch):
        row, survive = [], 1.0
        for i in range(gates):
            row.append(float(gate_p[b, i]) * survive)
            survive *= 1.0 - float(gate_p[b, i])
        probs.append(row + [survive])
    return probs


def _loop_losses(logits: Tensor, labels: Tensor, kind: str) -> list[list[float]]:
    out = []
    for b in range(logits.shape[0]):
        row = []
        for i in range(logits.shape[1]):
            if kind == "error":
                row.append(float(int(logits[b, i].argmax()) != int(labels[b])))
            else:
                row.append(float(F.cross_entropy(logits[b, i][None], labels[b][None])))
        out.append(row)
    return out


def _loop_expected_loss(gate_p: Tensor, losses: Tensor, cost: Tensor, alpha: float) -> Tensor:
    """Differentiable double loop over samples and exits."""
    batch, exits = losses.shape
    total = gate_p.new_zeros(())
    for b in range(batch):
        survive = gate_p.new_ones(())
        for i in range(exits):
            p = survive * gate_p[b, i] if i < exits - 1 else survive
            total = total + p * ((1 - alpha) * losses[b, i] + alpha * cost[i])
            if i < exits - 1:
                survive = survive * (1 - gate_p[b, i])
    return total / batch


@pytest.mark.parametrize("kind", ["error", "ce"])
def test_exit_losses_match_loop(kind: str) -> None:
    _, logits, labels, _ = _random_problem(23, 4, 6, seed=0)
    got = exit_losses(logits, labels, kind)
    assert got.shape == (23, 4)
    expected = torch.tensor(_loop_losses(logits, labels, kind), dtype=torch.float64)
    assert torch.allclose(got.double(), expected, atol=1e-6)


def test_exit_losses_error_is_zero_one() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # one sample, exit 0 says 0, exit 1 says 1
    assert exit_losses(logits, torch.tensor([1])).tolist() == [[1.0, 0.0]]


def test_exit_losses_unknown_kind() -> None:
    with pytest.raises(LeenetError, match="valid: error, ce"):
        exit_losses(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), "hinge")


@pytest.mark.parametrize("exits", [1, 2, 5])
def test_exit_probabilities_match_loop_and_sum_to_one(exits: int) -> None:
    gate_p = _random_problem(17, exits, 3, seed=exits)[0]
    gate_p[0] = 1.0  # leaves at the first exit for sure
    gate_p[1] = 0.0  # never leaves early
    probs = exit_probabilities(gate_p)
    assert probs.shape == (17, exits)
    assert torch.allclose(probs, torch.tensor(_loop_probabilities(gate_p), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(probs.sum(1), torch.ones(17, dtype=torch.float64), atol=1e-12)
    assert probs[1, -1] == 1.0
    if exits > 1:
        assert probs[0, 0] == 1.0


@pytest.mark.parametrize("kind", ["error", "ce"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_expected_exit_loss_matches_loop(kind: str, alpha: float) -> None:
    gate_p, logits, labels, cost = _random_problem(19, 4, 5, seed=3)
    losses = exit_losses(logits, labels, kind).double()
    got = expected_exit_loss(gate_p, losses, cost, alpha)
    assert got.dim() == 0
    assert abs(float(got) - float(_loop_expected_loss(gate_p, losses, cost, alpha))) < 1e-6


def test_expected_exit_loss_gradient_matches_loop() -> None:
    gate_p, logits, labels, cost = _random_problem(9, 4, 5, seed=4)
    losses = exit_losses(logits, labels, "ce").double()
    fast = gate_p.clone().requires_grad_(True)
    slow = gate_p.clone().requires_grad_(True)
    expected_exit_loss(fast, losses, cost, 0.4).backward()
    _loop_expected_loss(slow, losses, cost, 0.4).backward()
    assert torch.allclose(fast.grad, slow.grad, atol=1e-9)
    assert fast.grad.abs().sum() > 0


def _loop_hard_targets(losses: Tensor, cost: Tensor, alpha: float) -> list[list[float]]:
    """Gate i's target: leaving at i is strictly better than every later exit."""
    targets = []
    for b in range(losses.shape[0]):
        score = [(1 - alpha) * float(losses[b, i]) + alpha * float(cost[i]) for i in range(losses.shape[1])]
        targets.append([float(score[i] < min(score[i + 1:])) for i in range(len(score) - 1)])
    return targets


def _last_argmin(values: list[float]) -> int:
    best = min(values)
    return max(i for i, v in enumerate(values) if v == best)


@pytest.mark.parametrize("kind", ["error", "ce"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_hard_exit_targets_match_loop(kind: str, alpha: float) -> None:
    _, logits, labels, cost = _random_problem(40, 5, 3, seed=5)
    losses = exit_losses(logits, labels, kind).double()
    targets = hard_exit_targets(losses, cost, alpha)
    assert targets.shape == (40, 4)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    assert targets.tolist() == _loop_hard_targets(losses, cost, alpha)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_first_positive_hard_target_is_the_per_sample_optimum(alpha: float) -> None:
    """The first gate told to fire is argmin_i s_i; under ties (α = 0) the last minimizer."""
    _, logits, labels, cost = _random_problem(60, 5, 3, seed=6)
    losses = exit_losses(logits, labels, "error").double()  # 0/1 losses: many ties at α = 0
    chosen = first_exit(hard_exit_targets(losses, cost, alpha) > 0.5)
    score = (1 - alpha) * losses + alpha * cost
    expected = [_last_argmin(row) for row in score.tolist()]
    assert chosen.tolist() == expected
    if alpha > 0:  # costs strictly increase: no ties, the argmin is unique
        assert chosen.tolist() == score.argmin(1).tolist()
    if alpha == 1.0:  # only compute matters: everyone leaves at the cheapest exit
        assert chosen.eq(0).all()


def test_hard_exit_targets_tie_stays_at_alpha_zero() -> None:
    losses = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    cost = torch.tensor([0.2, 0.5, 0.8, 1.01])
    targets = hard_exit_targets(losses, cost, 0.0)
    assert targets.tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def _loop_balanced_bce(gate_logit: Tensor, targets: Tensor) -> float:
    per_gate = []
    for g in range(gate_logit.shape[1]):
        pos = [i for i in range(gate_logit.shape[0]) if targets[i, g] > 0.5]
        neg = [i for i in range(gate_logit.shape[0]) if targets[i, g] <= 0.5]
        total = 0.0
        for group, label in ((pos, 1.0), (neg, 0.0)):
            if group:
                terms = [-math.log(torch.sigmoid(gate_logit[i, g]).item()) if label else
                         -math.log(1 - torch.sigmoid(gate_logit[i, g]).item()) for i in group]
                total += 0.5 * sum(terms) / len(group)
        per_gate.append(total)
    return sum(per_gate) / len(per_gate)


def test_balanced_bce_matches_loop() -> None:
    gen = _gen(7)
    gate_logit = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    targets = (torch.rand(30, 4, generator=gen) < 0.2).double()
    targets[:, 2] = 1.0  # a gate with only positives
    targets[:, 3] = 0.0  # and one with only negatives
    got = balanced_bce(gate_logit, targets)
    assert abs(float(got) - _loop_balanced_bce(gate_logit, targets)) < 1e-9


def test_balanced_bce_weighs_classes_equally() -> None:
    """A constant prediction at the majority class costs as much as at the minority class."""
    targets = torch.tensor([[1.0]] + [[0.0]] * 99)
    low = balanced_bce(torch.full((100, 1), -2.0), targets)
    high = balanced_bce(torch.full((100, 1), 2.0), targets)
    assert torch.allclose(low, high)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), None, "x"])
def test_check_alpha_rejects(bad: float) -> None:
    with pytest.raises(LeenetError, match=r"\[0, 1\]"):
        check_alpha(bad)


@pytest.mark.parametrize("good", [0, 0.0, 0.5, 1])
def test_check_alpha_accepts(good: float) -> None:
    assert check_alpha(good) == float(good)
    assert isinstance(check_alpha(good), float)


def _tiny_net(tiny_stages: list[nn.Module], config: GateConfig | None = None) -> ExitNet:
    net = ExitNet.from_stages(tiny_stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                              gate_config=config or GateConfig(pooled=True))
    net.cost.copy_(torch.tensor([0.2, 0.45, 0.7, 1.03]))
    return net.eval()


def test_only_gates_get_gradients(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    """With stages and heads frozen and the losses from detached logits, only gates learn."""
    net = _tiny_net(tiny_stages)
    for module in [*net.stages, *net.heads]:
        freeze_(module)
    labels = torch.randint(0, NUM_CLASSES, (len(tiny_input),), generator=_gen(8))
    out = net.forward_all(tiny_input)
    losses = exit_losses(out.logits.detach(), labels, "ce")
    expected_exit_loss(out.gate_p, losses, net.cost, 0.3).backward()
    gate_params = list(net.gates.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_params)
    for name, param in net.named_parameters():
        if not name.startswith("gates."):
            assert param.grad is None, name


def _gate_objective(gates: nn.ModuleList, inputs: list[Tensor], losses: Tensor, cost: Tensor,
                    alpha: float, hard: bool) -> float:
    with torch.no_grad():
        scores = torch.stack([g.logit(x) for g, x in zip(gates, inputs)], dim=1)
        if hard:
            return float(balanced_bce(scores, hard_exit_targets(losses, cost, alpha)))
        return float(expected_exit_loss(torch.sigmoid(scores), losses, cost, alpha))


@pytest.mark.parametrize("objective", ["hard", "soft"])
def test_train_gates_leaves_net_untouched_and_learns(
    tiny_stages: list[nn.Module], tiny_input: Tensor, objective: str
) -> None:
    net = _tiny_net(tiny_stages, GateConfig(hidden=8, history=True, pooled=True))
    with torch.no_grad():
        out = net.forward_all(tiny_input)
    labels = out.logits[:, -1].argmax(-1)  # the final exit is always right, earlier ones not
    cache = CachedOutputs(out.logits, out.pooled, labels)
    before = copy.deepcopy(net.state_dict())
    config = GateTrainConfig(objective=objective, loss="ce", steps=60, lr=0.02)

    gates = train_gates(net, cache, 0.3, config, seed=0)

    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert gates is not net.gates and not gates.training
    torch.manual_seed(0)  # the initialization train_gates starts from
    init = copy.deepcopy(net.gates)
    for layer in init.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    trained, start = dict(gates.named_parameters()), dict(init.named_parameters())
    assert trained.keys() == start.keys()
    assert any(not torch.allclose(trained[k], start[k]) for k in trained)
    inputs = cache.gate_inputs(net.gate_config)
    for gate, x in zip(init, inputs):
        gate.fit_input_stats(x)
    losses = exit_losses(cache.logits, cache.labels, "ce")
    hard = objective == "hard"
    assert _gate_objective(gates, inputs, losses, net.cost, 0.3, hard) < _gate_objective(
        init, inputs, losses, net.cost, 0.3, hard)


def test_train_gates_alpha_one_exits_everyone_first(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    net = _tiny_net(tiny_stages)
    with torch.no_grad():
        out = net.forward_all(tiny_input)
    cache = CachedOutputs(out.logits, out.pooled, out.logits[:, -1].argmax(-1))
    gates = train_gates(net, cache, 1.0, GateTrainConfig(steps=100, lr=0.05))
    with torch.no_grad():
        p = torch.stack([g(x) for g, x in zip(gates, cache.gate_inputs(net.gate_config))], dim=1)
    assert first_exit(p >= 0.5).eq(0).all()


def test_train_gates_rejects_bad_alpha(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    net = _tiny_net(tiny_stages)
    with torch.no_grad():
        out = net.forward_all(tiny_input[:4])
    cache = CachedOutputs(out.logits, out.pooled, torch.zeros(4, dtype=torch.long))
    with pytest.raises(LeenetError, match=r"\[0, 1\]"):
        train_gates(net, cache, 2.0)


def test_soft_error_loss_matches_a_loop() -> None:
    logits = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    got = exit_losses(logits, labels, "soft_error")
    for b in range(6):
        for e in range(3):
            assert got[b, e] == pytest.approx(1 - torch.softmax(logits[b, e], -1)[labels[b]].item(), abs=1e-6)






@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
def test_range_units_have_the_same_minimizers_as_the_raw_objective(alpha: float) -> None:
    """argmin of the range-normalized objective == argmin of the raw one at raw_alpha, per sample."""
    from leenet.policy.objective import range_scale, raw_alpha

    gen = torch.Generator().manual_seed(1)
    losses = torch.rand(500, 4, generator=gen) * torch.tensor([0.6, 0.4, 0.2, 0.1])
    cost = torch.tensor([0.2, 0.45, 0.7, 1.0])
    scale = range_scale(losses, cost)
    d_loss, d_cost = float(losses[:, 0].mean() - losses[:, -1].mean()), 1.0 - 0.2
    assert scale == pytest.approx(d_loss / d_cost)
    a = raw_alpha(alpha, scale)
    normalized = (1 - alpha) * losses / d_loss + alpha * cost / d_cost
    raw = (1 - a) * losses + a * cost
    assert torch.equal(normalized.argmin(1), raw.argmin(1))
    assert (a == alpha) if alpha in (0.0, 1.0) else 0 < a < 1


def test_raw_alpha_is_monotone_and_falls_back_to_raw_units() -> None:
    from leenet.policy.objective import range_scale, raw_alpha

    values = [raw_alpha(k / 20, 0.1) for k in range(21)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert raw_alpha(0.5, 0.1) == pytest.approx(0.1 / 1.1)
    flat = torch.zeros(10, 3)  # no loss range: range units are raw units
    assert range_scale(flat, torch.tensor([0.3, 0.6, 1.0])) == 1.0
    with pytest.raises(LeenetError, match=r"\[0, 1\]"):
        raw_alpha(1.5, 0.1)


def test_unknown_alpha_units_are_refused() -> None:
    with pytest.raises(LeenetError, match="alpha units"):
        GateTrainConfig(alpha_units="percent")


@pytest.mark.parametrize("objective", ["hard", "soft", "predict"])
def test_alpha_zero_switches_every_gate_off(objective: str, tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    """alpha = 0 promises the backbone's accuracy: every objective ships gates that never fire."""
    net = ExitNet.from_stages(tiny_stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE)).eval()
    with torch.no_grad():
        out = net.forward_all(tiny_input)
    labels = out.logits[:, 0].argmax(-1)  # the first exit is always right: exiting early would look free
    cache = CachedOutputs(out.logits, out.pooled, labels)
    gates = train_gates(net, cache, 0.0, GateTrainConfig(objective=objective, steps=20), seed=0)
    assert not net.enabled_exits(gates).any()
    assert torch.stack([g(x) for g, x in zip(gates, cache.gate_inputs(net.gate_config))]).eq(0).all()
