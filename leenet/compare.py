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
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    order = np.lexsort((-arr[:, 1], arr[:, 0]))  # by cost, the most accurate first on ties
    arr = arr[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(arr[:, 1])[:-1]])
    keep = arr[:, 1] > best_before
    return [(float(c), float(a)) for c, a in arr[keep]]


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
                 lo: float, hi: float, tol: float = 0.0) -> dict:
    """How far one envelope lies above another over the costs ``[lo, hi]``.

    ``gap(c) = env_leenet(c) − env_baseline(c)``; both are staircases, so the gap is
    constant between consecutive breakpoints and the integrals are exact.

    Args:
        leenet_points: ``(cost, accuracy)`` of the method under test.
        baseline_points: ``(cost, accuracy)`` of the baseline.
        lo, hi: the cost range compared (``lo < hi``).
        tol: a point counts at cost ``c`` when it costs at most ``c + tol`` (a policy whose
            cheapest setting sends a handful of test samples past the first exit then still
            counts at the first exit's cost).

    Returns:
        ``area``: ∫ gap dc (signed; accuracy × cost units); ``area_below``: ∫ min(gap, 0) dc,
        the part where the method loses; ``mean_gap``: ``area / (hi − lo)``;
        ``worst_cost`` and ``worst_gap``: where the gap is smallest (the leftmost such cost)
        and its value; ``wins_everywhere``: ``worst_gap >= 0``.
    """
    if not hi > lo:
        raise ValueError(f"envelope_gap needs lo < hi, got lo={lo}, hi={hi}")
    env_a, env_b = upper_envelope(leenet_points), upper_envelope(baseline_points)
    inner = [c - tol for c, _ in env_a + env_b if lo < c - tol < hi]
    starts = np.unique(np.asarray([lo, *inner], dtype=float))
    widths = np.diff(np.append(starts, hi))
    gap = envelope_at(env_a, starts, tol) - envelope_at(env_b, starts, tol)
    worst = int(np.argmin(gap))
    area = float((gap * widths).sum())
    return {
        "lo": float(lo), "hi": float(hi),
        "area": area,
        "area_below": float((np.minimum(gap, 0.0) * widths).sum()),
        "mean_gap": area / (hi - lo),
        "worst_cost": float(starts[worst]),
        "worst_gap": float(gap[worst]),
        "wins_everywhere": bool(gap[worst] >= 0.0),
    }


def max_neighbour_jump(costs: Sequence[float]) -> float:
    """Largest absolute change of mean cost between neighbouring entries of an alpha sweep."""
    arr = np.asarray(costs, dtype=float)
    return float(np.abs(np.diff(arr)).max()) if len(arr) > 1 else 0.0
