"""Tests for leenet.evaluate: selection on calibration, budgets, operating points, Evaluator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.evaluate.evaluator import Candidate, Evaluator
from leenet.evaluate.select import (
    ACCURACY_DROPS,
    COST_BUDGETS,
    best_within_cost,
    cheapest_within_drop,
    find_budget,
    operating_points,
)
from leenet.nn.gates import Gate, gate_input_dim
from leenet.policy.cache import CachedOutputs
from leenet.policy.simulate import PolicyResult, first_exit, gate_probabilities, summarize


def _result(accuracy: float, cost: float) -> PolicyResult:
    return PolicyResult(accuracy, cost, (0.5, 0.5))


def _candidate(calib: tuple[float, float], test: tuple[float, float], alpha: float = 0.1,
               threshold: float | None = 0.5) -> Candidate:
    """A LEENet candidate with (accuracy, cost) on calibration and on test."""
    return Candidate("leenet", alpha, _result(*calib), _result(*test), threshold=threshold)


# (calibration accuracy, cost), (test accuracy, cost): test numbers disagree with calibration
# on purpose, so a selection that peeks at test picks differently.
CANDIDATES = [
    _candidate((0.70, 0.20), (0.95, 0.20), alpha=0.9),
    _candidate((0.80, 0.40), (0.70, 0.45), alpha=0.6),
    _candidate((0.80, 0.35), (0.60, 0.30), alpha=0.5, threshold=0.6),
    _candidate((0.90, 0.60), (0.90, 0.55), alpha=0.3),
    _candidate((0.95, 0.90), (0.94, 0.95), alpha=0.1),
    _candidate((0.96, 1.02), (0.96, 1.02), alpha=0.0),
]


def _loop_best_within_cost(candidates: list[Candidate], max_cost: float) -> Candidate | None:
    best = None
    for c in candidates:
        if c.calib.cost > max_cost + 1e-9:
            continue
        better = best is None or c.calib.accuracy > best.calib.accuracy or (
            c.calib.accuracy == best.calib.accuracy and c.calib.cost < best.calib.cost)
        best = c if better else best
    return best


def _loop_cheapest_within_drop(candidates: list[Candidate], reference: float, drop: float) -> Candidate | None:
    best = None
    for c in candidates:
        if c.calib.accuracy < reference - drop - 1e-9:
            continue
        better = best is None or c.calib.cost < best.calib.cost or (
            c.calib.cost == best.calib.cost and c.calib.accuracy > best.calib.accuracy)
        best = c if better else best
    return best


@pytest.mark.parametrize("max_cost", [0.1, 0.2, 0.39, 0.4, 0.5, 0.9, 2.0])
def test_best_within_cost_matches_loop(max_cost: float) -> None:
    assert best_within_cost(CANDIDATES, max_cost) is _loop_best_within_cost(CANDIDATES, max_cost)


def test_best_within_cost_breaks_accuracy_ties_by_cost_and_uses_calibration() -> None:
    chosen = best_within_cost(CANDIDATES, 0.5)
    assert chosen is CANDIDATES[2]  # same calibration accuracy as [1], cheaper
    assert best_within_cost(CANDIDATES, 0.1) is None
    assert best_within_cost([], 1.0) is None


@pytest.mark.parametrize("drop", [0.0, 0.01, 0.06, 0.2, 0.3])
def test_cheapest_within_drop_matches_loop(drop: float) -> None:
    got = cheapest_within_drop(CANDIDATES, 0.96, drop)
    assert got is _loop_cheapest_within_drop(CANDIDATES, 0.96, drop)


def test_cheapest_within_drop_examples() -> None:
    assert cheapest_within_drop(CANDIDATES, 0.96, 0.0) is CANDIDATES[5]
    assert cheapest_within_drop(CANDIDATES, 0.96, 0.01) is CANDIDATES[4]
    assert cheapest_within_drop(CANDIDATES, 0.96, 0.16) is CANDIDATES[2]
    assert cheapest_within_drop(CANDIDATES, 0.99, 0.01) is None


def test_find_budget_target_cost_reachable() -> None:
    budget = find_budget(CANDIDATES, target_cost=0.5, calib_reference=0.96, test_reference=0.96)
    assert budget["kind"] == "target_cost" and budget["target"] == 0.5
    assert budget["reachable"] is True
    assert budget["alpha"] == 0.5 and budget["threshold"] == 0.6
    assert budget["calib"] == CANDIDATES[2].calib.as_dict()
    assert budget["test"] == CANDIDATES[2].test.as_dict()
    assert budget["met_on_test"] is True  # test cost 0.30 <= 0.5
    assert "alpha=0.5" in budget["message"] and "held" in budget["message"]


def test_find_budget_reports_a_budget_missed_on_test() -> None:
    budget = find_budget(CANDIDATES, target_cost=0.9, calib_reference=0.96, test_reference=0.96)
    assert budget["alpha"] == 0.1  # calibration cost 0.90 fits, test cost 0.95 does not
    assert budget["met_on_test"] is False
    assert "NOT held" in budget["message"]


def test_find_budget_max_drop_reachable() -> None:
    budget = find_budget(CANDIDATES, max_drop=0.01, calib_reference=0.96, test_reference=0.95)
    assert budget["kind"] == "max_drop" and budget["reachable"] is True
    assert budget["alpha"] == 0.1
    assert budget["met_on_test"] is True  # 0.94 >= 0.95 - 0.01


@pytest.mark.parametrize("kwargs", [dict(target_cost=0.1), dict(max_drop=0.001)])
def test_find_budget_unreachable(kwargs: dict) -> None:
    budget = find_budget(CANDIDATES, calib_reference=0.99, test_reference=0.99, **kwargs)
    assert budget["reachable"] is False
    assert "alpha" not in budget and "met_on_test" not in budget
    message = budget["message"]
    assert message.startswith("UNREACHABLE on the calibration split")
    if "target_cost" in kwargs:  # the cheapest setting binds: 0.200 > 0.1
        assert "cheapest LEENet setting costs 0.200" in message and "--target-cost" in message
    else:  # the most accurate one binds: 96.00 % against the backbone's 99.00 %
        assert "reaches 96.00%" in message and "99.00%" in message and "--max-drop" in message


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(), "exactly one"),
        (dict(target_cost=0.5, max_drop=0.01), "exactly one"),
        (dict(target_cost=0.0), "positive"),
        (dict(max_drop=1.0), r"\[0, 1\)"),
        (dict(max_drop=-0.1), r"\[0, 1\)"),
    ],
)
def test_find_budget_rejects_bad_budgets(kwargs: dict, pattern: str) -> None:
    with pytest.raises(LeenetError, match=pattern):
        find_budget(CANDIDATES, calib_reference=0.9, test_reference=0.9, **kwargs)


def test_find_budget_needs_candidates() -> None:
    with pytest.raises(LeenetError, match="at least one alpha"):
        find_budget([], target_cost=0.5, calib_reference=0.9, test_reference=0.9)


def test_operating_points_structure() -> None:
    other = [Candidate("max_softmax", 0.7, _result(0.85, 0.5), _result(0.84, 0.52))]
    points = operating_points({"leenet": CANDIDATES, "max_softmax": other}, 0.96, 0.96)
    per_method = len(COST_BUDGETS) + len(ACCURACY_DROPS)
    assert len(points) == 2 * per_method
    assert [p["method"] for p in points] == ["leenet"] * per_method + ["max_softmax"] * per_method
    for point in points:
        assert {"name", "kind", "target", "method", "reachable"} <= set(point)
        assert point["kind"] in ("max_cost", "max_drop")
        if point["reachable"]:
            assert {"accuracy", "cost", "exit_fractions", "calib", "met_on_test"} <= set(point)
        else:
            assert "met_on_test" not in point
    leenet = {(p["kind"], p["target"]): p for p in points if p["method"] == "leenet"}
    half = leenet[("max_cost", 0.5)]
    assert half["param"] == 0.5 and half["accuracy"] == 0.60 and half["calib"]["accuracy"] == 0.80
    assert half["met_on_test"] is True
    assert leenet[("max_cost", 0.25)]["param"] == 0.9
    assert leenet[("max_cost", 1.0)]["param"] == 0.1 and leenet[("max_cost", 1.0)]["met_on_test"] is True
    assert leenet[("max_drop", 0.01)]["param"] == 0.1
    assert leenet[("max_drop", 0.01)]["met_on_test"] is False  # test accuracy 0.94 < 0.96 - 0.01
    softmax = {(p["kind"], p["target"]): p for p in points if p["method"] == "max_softmax"}
    assert softmax[("max_cost", 0.25)]["reachable"] is False
    assert softmax[("max_drop", 0.005)]["reachable"] is False
    assert softmax[("max_cost", 0.75)]["reachable"] is True


def _cache(seed: int, n: int = 40) -> CachedOutputs:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, 4, generator=gen)
    pooled = [torch.randn(n, 6, generator=gen), torch.randn(n, 5, generator=gen)]
    return CachedOutputs(logits, pooled, torch.randint(0, 4, (n,), generator=gen))


def test_evaluator_policies_agree_with_direct_computation() -> None:
    calib, test = _cache(0), _cache(1, n=30)
    cost = torch.tensor([0.3, 0.6, 1.05])
    evaluator = Evaluator(calib, test, cost)

    singles = evaluator.single_exits()
    assert [c.param for c in singles] == [0, 1, 2]
    for c in singles:
        assert c.test.accuracy == pytest.approx(float(test.correct[:, c.param].float().mean()))
        assert c.calib.cost == pytest.approx(float(cost[c.param]))

    oracle = evaluator.oracle()
    assert oracle.test.accuracy == pytest.approx(float(test.correct.any(1).float().mean()))

    scores = evaluator.confidence("max_softmax")
    assert scores[-1].calib.exit_fractions[-1] == 1.0  # never-exit threshold comes last
    assert all(c.method == "max_softmax" for c in scores)

    config = GateConfig(hidden=4, history=True, pooled=True)
    torch.manual_seed(0)
    gates = nn.ModuleList(Gate(gate_input_dim(i, d, config), 4) for i, d in enumerate([6, 5]))
    found = evaluator.leenet(0.2, gates, config, thresholds=(0.3, 0.5, 0.7))
    assert [c.threshold for c in found] == [0.3, 0.5, 0.7] and all(c.param == 0.2 for c in found)
    p_test = gate_probabilities(gates, test.gate_inputs(config))
    for c in found:
        direct = summarize(first_exit(p_test >= c.threshold), test.correct, cost)
        assert c.test == direct


def test_accuracy_budgets_keep_a_margin_of_standard_errors() -> None:
    """A candidate that fits the drop only by calibration luck is skipped; margin 0 takes it."""
    lucky = Candidate("leenet", 0.5, PolicyResult(0.955, 0.3, (1.0, 0.0), drop_stderr=0.004),
                      PolicyResult(0.9, 0.3, (1.0, 0.0)))
    safe = Candidate("leenet", 0.1, PolicyResult(0.958, 0.6, (0.5, 0.5), drop_stderr=0.002),
                     PolicyResult(0.95, 0.6, (0.5, 0.5)))
    assert cheapest_within_drop([lucky, safe], 0.96, 0.005, margin=0.0) is lucky
    assert cheapest_within_drop([lucky, safe], 0.96, 0.005) is safe


def test_summarize_drop_stderr_is_mcnemar() -> None:
    correct = torch.tensor([[1, 1], [0, 1], [1, 0], [1, 1]], dtype=torch.bool)
    result = summarize(torch.tensor([0, 0, 0, 1]), correct, torch.tensor([0.5, 1.0]))
    assert result.drop_stderr == pytest.approx((2 / 4 / 4) ** 0.5)  # 2 of 4 discordant


def test_cost_budgets_keep_a_margin_of_standard_errors() -> None:
    """A candidate right at the cost budget overshoots it half the time on new data: skipped."""
    edge = Candidate("leenet", 0.5, PolicyResult(0.95, 0.499, (0.5, 0.5), cost_stderr=0.004),
                     PolicyResult(0.95, 0.503, (0.5, 0.5)))
    inside = Candidate("leenet", 0.6, PolicyResult(0.94, 0.49, (0.6, 0.4), cost_stderr=0.004),
                       PolicyResult(0.94, 0.49, (0.6, 0.4)))
    assert best_within_cost([edge, inside], 0.5, margin=0.0) is edge
    assert best_within_cost([edge, inside], 0.5) is inside


def test_find_budget_and_operating_points_pass_the_margin_on() -> None:
    """The margin of find_budget / operating_points reaches the selection; bad margins are refused."""
    edge = Candidate("leenet", 0.5, PolicyResult(0.95, 0.499, (0.5, 0.5), cost_stderr=0.004),
                     PolicyResult(0.95, 0.503, (0.5, 0.5)), threshold=0.5)
    inside = Candidate("leenet", 0.6, PolicyResult(0.94, 0.49, (0.6, 0.4), cost_stderr=0.004),
                       PolicyResult(0.94, 0.49, (0.6, 0.4)), threshold=0.5)
    refs = {"calib_reference": 0.95, "test_reference": 0.95}
    tight = find_budget([edge, inside], target_cost=0.5, margin=0.0, **refs)
    assert (tight["alpha"], tight["margin"], tight["met_on_test"]) == (0.5, 0.0, False)
    assert find_budget([edge, inside], target_cost=0.5, **refs)["alpha"] == 0.6
    unreachable = find_budget([edge, inside], target_cost=0.5, margin=3.0, **refs)  # 0.49 + 0.012 > 0.5
    assert not unreachable["reachable"] and "3 standard errors" in unreachable["message"]
    points = {p["name"]: p for p in operating_points({"leenet": [edge, inside]}, *refs.values(), margin=0.0)}
    assert points["accuracy at <= 50% FLOPs"]["param"] == 0.5
    points = {p["name"]: p for p in operating_points({"leenet": [edge, inside]}, *refs.values())}
    assert points["accuracy at <= 50% FLOPs"]["param"] == 0.6
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(LeenetError, match="--budget-margin"):
            find_budget([edge, inside], target_cost=0.5, margin=bad, **refs)


def test_summarize_cost_stderr_is_the_standard_error_of_the_mean_cost() -> None:
    correct = torch.ones(4, 2, dtype=torch.bool)
    result = summarize(torch.tensor([0, 0, 1, 1]), correct, torch.tensor([0.5, 1.0]))
    assert result.cost == pytest.approx(0.75) and result.cost_stderr == pytest.approx(0.25 / 2)
