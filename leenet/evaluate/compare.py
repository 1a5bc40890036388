"""Compare accuracy-vs-cost curves: upper envelopes and the gap between two of them.

A policy family (LEENet over alpha, a threshold baseline over thresholds) gives points
``(cost, accuracy)``. With a compute budget ``c`` one may pick any point of cost at most
``c``, so what a family offers at ``c`` is its *upper envelope*: the best accuracy among
points no dearer than ``c``, a non-decreasing staircase. Below the cheapest point a family
offers nothing; its envelope is taken as 0 there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]  # (cost, accuracy)


def upper_envelope(points: Sequence[Point]) -> list[Point]:
    """The Pareto staircase of ``points``: costs and accuracies both strictly increasing.

    Args:
        points: ``(cost, accuracy)`` pairs, in any order.

    Returns:
        The points no other point beats (cheaper or equal cost with at least the same
        accuracy), sorted by cost. ``env(c)`` is the accuracy of the last one with cost ≤ c.
    """
    if len(points) == 0:
        return []
    arr, order, raises = _staircase(points)
    return [(float(c), float(a)) for c, a in arr[order][raises]]


def _staircase(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``points`` as a finite (N, 2) array, their order by cost (the most accurate first on
    ties), and which of the points in that order raise the upper envelope."""
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    if not np.isfinite(arr).all():
        raise ValueError("every (cost, accuracy) point must be finite: a NaN would hide the points after it")
    order = np.lexsort((-arr[:, 1], arr[:, 0]))
    acc = arr[order, 1]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(acc)[:-1]])
    return arr, order, acc > best_before


def envelope_at(envelope: Sequence[Point], costs: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Evaluate a staircase from :func:`upper_envelope` at ``costs`` (0 below its first point).

    A point counts at ``c`` when its cost is at most ``c + tol``.
    """
    if len(envelope) == 0:
        return np.zeros(np.shape(costs))
    env = np.asarray(envelope, dtype=float)
    idx = np.searchsorted(env[:, 0], np.asarray(costs, dtype=float) + tol, side="right") - 1
    return np.where(idx >= 0, env[np.clip(idx, 0, None), 1], 0.0)


def envelope_gap(leenet_points: Sequence[Point], baseline_points: Sequence[Point],
                 lo: float, hi: float, tol: float = 0.0, outcomes: tuple | None = None) -> dict:
    """How far one envelope lies above another over the costs ``[lo, hi]``.

    ``gap(c) = env_leenet(c) − env_baseline(c)``; both are staircases, so the gap is
    constant between consecutive breakpoints and the integrals are exact.

    Args:
        leenet_points: ``(cost, accuracy)`` of the method under test.
        baseline_points: ``(cost, accuracy)`` of the baseline.
        lo: the low end of the cost range compared (``lo < hi``).
        hi: the high end of the cost range compared.
        tol: a point counts at cost ``c`` when it costs at most ``c + tol`` (a policy whose
            cheapest setting sends a handful of test samples past the first exit then still
            counts at the first exit's cost).
        outcomes: optional ``(leenet, baseline)`` per-sample correctness, arrays (P, N) of
            0/1 aligned with the points (each point's accuracy is its row's mean), all on the
            same N samples. The gap at each cost is then a paired difference of two policies,
            with a standard error; the worst point of a staircase compared at hundreds of
            costs is the most negative of many noisy differences, and its error says whether
            it is a loss or noise.

    Returns:
        ``area``: ∫ gap dc (signed; accuracy × cost units); ``area_below``: ∫ min(gap, 0) dc,
        the part where the method loses; ``mean_gap``: ``area / (hi − lo)``;
        ``worst_cost`` and ``worst_gap``: where the gap is smallest (the leftmost such cost)
        and its value; ``wins_everywhere``: ``worst_gap >= 0``. With ``outcomes``, also
        ``worst_stderr`` (the paired standard error of the gap at ``worst_cost``) and
        ``min_z``, ``min_z_cost``, ``min_z_gap``: the smallest gap / standard error over the
        costs where both families have a point (the most significant loss when negative).
    """
    if not (np.isfinite([lo, hi]).all() and hi > lo):
        raise ValueError(f"envelope_gap needs finite lo < hi, got lo={lo}, hi={hi}")
    env_a, env_b = upper_envelope(leenet_points), upper_envelope(baseline_points)
    inner = [c - tol for c, _ in env_a + env_b if lo < c - tol < hi]
    starts = np.unique(np.asarray([lo, *inner], dtype=float))
    widths = np.diff(np.append(starts, hi))
    gap = envelope_at(env_a, starts, tol) - envelope_at(env_b, starts, tol)
    worst = int(np.argmin(gap))
    area = float((gap * widths).sum())
    out = {
        "lo": float(lo), "hi": float(hi),
        "area": area,
        "area_below": float((np.minimum(gap, 0.0) * widths).sum()),
        "mean_gap": area / (hi - lo),
        "worst_cost": float(starts[worst]),
        "worst_gap": float(gap[worst]),
        "wins_everywhere": bool(gap[worst] >= 0.0),
    }
    if outcomes is not None:
        out.update(_gap_significance(leenet_points, baseline_points, outcomes, starts, worst, tol))
    return out


def _envelope_members(points: Sequence[Point], costs: np.ndarray, tol: float) -> np.ndarray:
    """Index into ``points`` of the point that gives the upper envelope its value at each cost (-1: none)."""
    arr, order, raises = _staircase(points)
    step = np.maximum.accumulate(np.where(raises, np.arange(len(order)), -1))  # last improvement so far
    idx = np.searchsorted(arr[order, 0], np.asarray(costs, dtype=float) + tol, side="right") - 1
    return np.where(idx >= 0, order[step[np.clip(idx, 0, None)]], -1)


def paired_stderr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Standard error of ``mean(a) − mean(b)`` over paired samples (last axis), e.g. two
    policies' 0/1 correctness on the same test images (McNemar's normal approximation)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return np.sqrt(np.maximum(d.var(axis=-1), 0.0) / d.shape[-1])


def _gap_significance(leenet_points: Sequence[Point], baseline_points: Sequence[Point], outcomes: tuple,
                      starts: np.ndarray, worst: int, tol: float) -> dict:
    ours, theirs = (np.asarray(o, dtype=bool) for o in outcomes)
    if ours.shape[0] != len(leenet_points) or theirs.shape[0] != len(baseline_points) or ours.shape[1] != theirs.shape[1]:
        raise ValueError("outcomes must have one row per point and the same samples for both families")
    a, b = _envelope_members(leenet_points, starts, tol), _envelope_members(baseline_points, starts, tol)
    both = (a >= 0) & (b >= 0)
    se = np.full(len(starts), np.nan)
    se[both] = paired_stderr(ours[a[both]], theirs[b[both]])
    gap = ours[a[both]].mean(-1) - theirs[b[both]].mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se[both] > 0, gap / se[both], np.sign(gap) * np.inf)
    z = np.where(gap == 0, 0.0, z)
    out = {"worst_stderr": float(se[worst])}
    if both.any():
        k = int(np.argmin(z))
        out.update(min_z=float(z[k]), min_z_cost=float(starts[both][k]), min_z_gap=float(gap[k]))
    return out


def max_neighbour_jump(costs: Sequence[float]) -> float:
    """Largest absolute change of mean cost between neighbouring entries of an alpha sweep."""
    arr = np.asarray(costs, dtype=float)
    return float(np.abs(np.diff(arr)).max()) if len(arr) > 1 else 0.0


GAP_TOL = 0.002  # a point counts up to 0.2 % of the backbone's FLOPs early (see envelope_gap's tol)
BASELINES = ("max_softmax", "entropy")


def versus_thresholds(policies: Sequence[dict], lo: float, hi: float = 1.0) -> dict:
    """LEENet's curves of a run against the better of its threshold baselines, on the test split.

    Args:
        policies: a run's ``results.json`` policy entries (``method``, ``param``, ``cost``,
            ``accuracy``): the ``leenet`` α-curve, the ``leenet_budget`` curve when present, and
            the ``max_softmax`` / ``entropy`` baselines, whose upper envelopes are merged.
        lo: the low end of the cost range compared, the first exit's cost.
        hi: the high end of the cost range compared, the backbone's cost.

    Returns:
        Per LEENet curve present: ``area`` (accuracy × cost above the baseline envelope,
        signed), ``worst_gap`` and ``worst_cost`` (:func:`envelope_gap`), and ``max_jump``, the
        largest change of cost between neighbouring settings (alphas or budgets); empty when
        there is nothing to compare.
    """
    base = [(p["cost"], p["accuracy"]) for p in policies if p.get("method") in BASELINES]
    out = {}
    for method in ("leenet", "leenet_budget"):
        points = sorted((p for p in policies if p.get("method") == method), key=lambda p: p["param"])
        if not (points and base and hi > lo):
            continue
        gap = envelope_gap([(p["cost"], p["accuracy"]) for p in points], base, lo, hi, GAP_TOL)
        out[method] = {"area": gap["area"], "worst_gap": gap["worst_gap"], "worst_cost": gap["worst_cost"],
                       "max_jump": max_neighbour_jump([p["cost"] for p in points])}
    return out
