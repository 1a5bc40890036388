"""Tests for leenet.policies: each policy against a per-sample loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.nn.gates import Gate, gate_features
from leenet.policy.cache import CachedOutputs
from leenet.policy.simulate import ABOVE_EVERY_SCORE as NEVER_EXIT
from leenet.policy.simulate import (
    confidence_scores,
    first_exit,
    gate_probabilities,
    oracle_exits,
    summarize,
    threshold_exits,
    threshold_grid,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_bool(rows: int, cols: int, seed: int, p: float = 0.3) -> Tensor:
    """Random (rows, cols) bool with an all-False row 0 and an all-True row 1 when rows > 1."""
    leave = torch.rand(rows, cols, generator=_gen(seed)) < p
    if rows > 1:
        leave[0] = False
        leave[1] = True
    return leave


def _loop_first_exit(leave: Tensor) -> list[int]:
    out = []
    for row in leave.tolist():
        out.append(next((i for i, fired in enumerate(row) if fired), len(row)))
    return out


@pytest.mark.parametrize("rows, gates", [(1, 3), (2, 1), (50, 3), (9, 7), (5, 0)])
def test_first_exit_matches_loop(rows: int, gates: int) -> None:
    leave = _random_bool(rows, gates, seed=rows + gates)
    got = first_exit(leave)
    assert got.dtype == torch.long
    assert got.tolist() == _loop_first_exit(leave)


def test_first_exit_edge_rows() -> None:
    leave = torch.tensor([[False, False, False], [True, True, True], [False, True, True], [False, False, True]])
    assert first_exit(leave).tolist() == [3, 0, 1, 2]


def _loop_summary(exit_index: Tensor, correct: Tensor, cost: Tensor) -> tuple[float, float, list[float]]:
    n, exits = correct.shape
    right = sum(bool(correct[k, int(exit_index[k])]) for k in range(n)) / n
    mean_cost = sum(float(cost[int(exit_index[k])]) for k in range(n)) / n
    fractions = [sum(int(exit_index[k]) == e for k in range(n)) / n for e in range(exits)]
    return right, mean_cost, fractions


@pytest.mark.parametrize("n", [1, 2, 37])
def test_summarize_matches_loop(n: int) -> None:
    gen = _gen(n)
    exits = 4
    exit_index = torch.randint(0, exits, (n,), generator=gen)
    correct = torch.rand(n, exits, generator=gen) < 0.6
    cost = torch.tensor([0.1, 0.4, 0.7, 1.02])
    result = summarize(exit_index, correct, cost)
    right, mean_cost, fractions = _loop_summary(exit_index, correct, cost)
    assert result.accuracy == pytest.approx(right, abs=1e-6)
    assert result.cost == pytest.approx(mean_cost, abs=1e-6)
    assert result.exit_fractions == pytest.approx(fractions, abs=1e-6)
    assert len(result.exit_fractions) == exits  # exits nobody used still get a 0
    assert sum(result.exit_fractions) == pytest.approx(1.0)
    assert result.as_dict()["exit_fractions"] == list(result.exit_fractions)


def _loop_threshold_exits(scores: Tensor, threshold: float) -> list[int]:
    out = []
    for row in scores.tolist():
        out.append(next((i for i, s in enumerate(row[:-1]) if s >= threshold), len(row) - 1))
    return out


@pytest.mark.parametrize("n", [1, 2, 40])
@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.75, math.inf])  # exact in float32
def test_threshold_exits_matches_loop(n: int, threshold: float) -> None:
    scores = torch.rand(n, 4, generator=_gen(n)).round(decimals=1)  # many ties, also at the threshold
    if n > 2:
        scores[0] = 0.0  # never confident early
        scores[1] = 1.0  # confident everywhere
        scores[2, :3] = threshold if math.isfinite(threshold) else 0.0  # exactly at the threshold
    got = threshold_exits(scores, threshold)
    assert got.tolist() == _loop_threshold_exits(scores, threshold)


def test_threshold_exits_ignores_the_final_column() -> None:
    scores = torch.tensor([[0.1, 0.2, 0.99], [0.6, 0.1, 0.0]])
    assert threshold_exits(scores, 0.5).tolist() == [2, 0]


def _loop_oracle(correct: Tensor) -> list[int]:
    return [next((i for i, ok in enumerate(row) if ok), 0) for row in correct.tolist()]


@pytest.mark.parametrize("n", [1, 2, 33])
def test_oracle_exits_matches_loop(n: int) -> None:
    correct = _random_bool(n, 4, seed=n, p=0.4)  # row 0 nobody is right, row 1 everyone is
    got = oracle_exits(correct)
    assert got.tolist() == _loop_oracle(correct)
    if n > 1:
        assert got[:2].tolist() == [0, 0]


def test_oracle_is_at_least_as_accurate_and_cheap_as_any_single_exit() -> None:
    correct = torch.rand(200, 4, generator=_gen(3)) < 0.7
    cost = torch.tensor([0.2, 0.5, 0.8, 1.01])
    oracle = summarize(oracle_exits(correct), correct, cost)
    for e in range(4):
        single = summarize(torch.full((200,), e, dtype=torch.long), correct, cost)
        assert oracle.accuracy >= single.accuracy
    assert oracle.accuracy == pytest.approx(float(correct.any(1).float().mean()))


def _loop_confidence(logits: Tensor, kind: str) -> list[list[float]]:
    out = []
    for sample in logits:
        row = []
        for exit_logits in sample:
            p = [math.exp(v) for v in exit_logits.tolist()]
            p = [v / sum(p) for v in p]
            if kind == "max_softmax":
                row.append(max(p))
            else:
                entropy = -sum(v * math.log(v) for v in p if v > 0)
                row.append(1 - entropy / math.log(max(len(p), 2)))
        out.append(row)
    return out


@pytest.mark.parametrize("kind", ["max_softmax", "entropy"])
@pytest.mark.parametrize("n, classes", [(1, 10), (2, 2), (25, 7)])
def test_confidence_scores_match_loop(kind: str, n: int, classes: int) -> None:
    logits = torch.randn(n, 3, classes, generator=_gen(n)) * 3
    logits[0, 0] = 0.0  # uniform: max_softmax 1/C, entropy score 0
    got = confidence_scores(logits, kind)
    assert got.shape == (n, 3)
    assert torch.allclose(got.double(), torch.tensor(_loop_confidence(logits, kind), dtype=torch.float64), atol=1e-5)
    expected_uniform = 1 / classes if kind == "max_softmax" else 0.0
    assert float(got[0, 0]) == pytest.approx(expected_uniform, abs=1e-6)


def test_confidence_scores_unknown_kind() -> None:
    with pytest.raises(LeenetError, match="max_softmax, entropy"):
        confidence_scores(torch.zeros(2, 3, 4), "margin")


def test_threshold_grid_spans_the_scores_and_ends_with_never_exit() -> None:
    scores = torch.rand(100, 4, generator=_gen(5))
    grid = threshold_grid(scores, count=11)
    assert grid[-1] == NEVER_EXIT and NEVER_EXIT > 1.0
    assert grid[:-1] == sorted(set(grid[:-1])) and len(grid) <= 11
    assert grid[0] == pytest.approx(float(scores[:, :-1].min()), abs=1e-6)
    assert grid[-2] == pytest.approx(float(scores[:, :-1].max()), abs=1e-6)
    assert threshold_exits(scores, grid[-1]).eq(3).all()  # never-exit sends all to the final exit
    assert threshold_grid(scores[:, :1]) == [NEVER_EXIT]  # no early exits: only never-exit


def test_gate_probabilities_match_gates() -> None:
    torch.manual_seed(0)
    gates = nn.ModuleList([Gate(3, 4), Gate(5, 0)])
    inputs = [torch.randn(6, 3), torch.randn(6, 5)]
    got = gate_probabilities(gates, inputs)
    assert got.shape == (6, 2)
    for i, (gate, x) in enumerate(zip(gates, inputs)):
        assert torch.allclose(got[:, i], gate(x).detach())
    assert gate_probabilities(nn.ModuleList(), []).shape == (0, 0)


def test_cached_outputs_gate_inputs_and_correct() -> None:
    logits = torch.randn(8, 3, 4, generator=_gen(6))
    pooled = [torch.randn(8, 5, generator=_gen(7)), torch.randn(8, 2, generator=_gen(8))]
    labels = logits[:, 1].argmax(-1)
    cache = CachedOutputs(logits, pooled, labels)
    assert cache.correct[:, 1].all()
    config = GateConfig(history=True, pooled=True)
    inputs = cache.gate_inputs(config)
    assert len(inputs) == 2
    for i, x in enumerate(inputs):
        assert torch.equal(x, gate_features(logits[:, i], logits[:, :i], pooled[i], config))


def test_cached_outputs_rejects_empty_and_nonfinite() -> None:
    with pytest.raises(LeenetError, match="empty"):
        CachedOutputs(torch.zeros(0, 2, 3), [torch.zeros(0, 4)], torch.zeros(0, dtype=torch.long))
    bad = torch.zeros(2, 2, 3)
    bad[1, 0, 2] = float("nan")
    with pytest.raises(LeenetError, match="NaN"):
        CachedOutputs(bad, [torch.zeros(2, 4)], torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([[0], [1]]), "one int64 class index per sample"),  # (N, 1)
    (torch.tensor([0.0, 1.0]), "one int64 class index per sample"),  # float targets
    (torch.tensor([0, 1, 2]), "one int64 class index per sample"),  # another length
    (torch.tensor([1, 3]), "0..2"),  # 1-based: 3 is out of range for 3 classes
    (torch.tensor([-1, 0]), "0..2"),
])
def test_cached_outputs_rejects_bad_labels(labels: Tensor, match: str) -> None:
    with pytest.raises(LeenetError, match=match):
        CachedOutputs(torch.zeros(2, 2, 3), [torch.zeros(2, 4)], labels)
    with pytest.raises(LeenetError, match="exits, classes"):
        CachedOutputs(torch.zeros(2, 3), [torch.zeros(2, 4)], torch.zeros(2, dtype=torch.long))
