"""Envelope comparison against slow, obviously-correct references."""

import numpy as np
import pytest

from leenet.evaluate.compare import envelope_at, envelope_gap, max_neighbour_jump, paired_stderr, upper_envelope


def _slow_env(points, c):
    fits = [a for cost, a in points if cost <= c]
    return max(fits) if fits else 0.0


def _random_points(rng, n):
    return [(float(c), float(a)) for c, a in zip(rng.uniform(0.1, 1.0, n), rng.uniform(0.5, 1.0, n))]


def test_upper_envelope_is_the_pareto_staircase():
    points = [(0.5, 0.9), (0.2, 0.8), (0.3, 0.7), (0.5, 0.85), (0.9, 0.88), (1.0, 0.95), (0.2, 0.6)]
    assert upper_envelope(points) == [(0.2, 0.8), (0.5, 0.9), (1.0, 0.95)]
    assert upper_envelope([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_envelope_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    points = _random_points(rng, 30)
    env = upper_envelope(points)
    grid = np.linspace(0.0, 1.1, 500)
    assert np.allclose(envelope_at(env, grid), [_slow_env(points, c) for c in grid])


@pytest.mark.parametrize("seed", range(5))
def test_envelope_gap_matches_dense_integration(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_points(rng, 25), _random_points(rng, 25)
    lo, hi = 0.15, 1.0
    out = envelope_gap(a, b, lo, hi)
    n = 200_000
    grid = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    gap = np.array([_slow_env(a, c) - _slow_env(b, c) for c in grid[::100]])
    dense = np.repeat(gap, 100)
    assert out["area"] == pytest.approx(dense.mean() * (hi - lo), abs=2e-3)
    assert out["area_below"] == pytest.approx(np.minimum(dense, 0).mean() * (hi - lo), abs=2e-3)
    assert out["worst_gap"] == pytest.approx(gap.min(), abs=1e-9) or out["worst_gap"] <= gap.min()
    assert out["worst_gap"] == pytest.approx(_slow_env(a, out["worst_cost"]) - _slow_env(b, out["worst_cost"]))
    assert out["wins_everywhere"] == (out["worst_gap"] >= 0)


def test_envelope_gap_exact_case():
    a = [(0.2, 0.9), (0.6, 0.95)]
    b = [(0.2, 0.85), (0.4, 0.97)]
    out = envelope_gap(a, b, 0.2, 1.0)
    assert out["area"] == pytest.approx(0.05 * 0.2 - 0.07 * 0.2 - 0.02 * 0.4)
    assert out["worst_cost"] == pytest.approx(0.4) and out["worst_gap"] == pytest.approx(-0.07)
    with pytest.raises(ValueError):
        envelope_gap(a, b, 1.0, 1.0)


def test_paired_stderr_known_value():
    # differences (0, 1, 0, 0): variance 3/16 over 4 samples
    assert paired_stderr([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(np.sqrt(3 / 16 / 4))
    assert paired_stderr([1, 0, 1], [1, 0, 1]) == 0.0


def _slow_member(points, c, tol):
    """Index of the most accurate point costing at most c + tol, the cheapest on ties."""
    fits = [i for i, (cost, _) in enumerate(points) if cost <= c + tol]
    return max(fits, key=lambda i: (points[i][1], -points[i][0])) if fits else None


@pytest.mark.parametrize("seed", range(4))
def test_envelope_gap_significance_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n, tol, lo, hi = 400, 0.002, 0.15, 1.0
    ours, theirs = rng.random((20, n)) < rng.uniform(0.6, 0.95, (20, 1)), rng.random((25, n)) < 0.8
    a = [(float(c), float(o.mean())) for c, o in zip(rng.uniform(0.1, 1.0, 20), ours)]
    b = [(float(c), float(o.mean())) for c, o in zip(rng.uniform(0.1, 1.0, 25), theirs)]
    if seed % 2:  # both families have a point at every cost compared
        lo = max(min(c for c, _ in a), min(c for c, _ in b))
    out = envelope_gap(a, b, lo, hi, tol, outcomes=(ours, theirs))
    assert not (seed % 2 and np.isnan(out["worst_stderr"]))
    assert {k: v for k, v in out.items() if k in envelope_gap(a, b, lo, hi, tol)} == envelope_gap(a, b, lo, hi, tol)
    costs = sorted({lo, *(c - tol for c, _ in a + b if lo < c - tol < hi)})
    z_ref = []
    for c in costs:
        i, j = _slow_member(a, c, tol), _slow_member(b, c, tol)
        if i is None or j is None:
            continue
        d = ours[i].astype(float) - theirs[j].astype(float)
        se = np.sqrt(np.mean((d - d.mean()) ** 2) / n)
        z_ref.append((d.mean() / se if se > 0 else 0.0, c, d.mean()))
    z, c, gap = min(z_ref)
    assert out["min_z"] == pytest.approx(z) and out["min_z_cost"] == pytest.approx(c)
    assert out["min_z_gap"] == pytest.approx(gap)
    i, j = _slow_member(a, out["worst_cost"], tol), _slow_member(b, out["worst_cost"], tol)
    if i is None or j is None:  # one family offers nothing there: no paired error
        assert np.isnan(out["worst_stderr"])
    else:
        d = ours[i].astype(float) - theirs[j].astype(float)
        assert out["worst_stderr"] == pytest.approx(np.sqrt(np.mean((d - d.mean()) ** 2) / n))


def test_envelope_gap_rejects_outcomes_that_do_not_match_the_points():
    with pytest.raises(ValueError, match="one row per point"):
        envelope_gap([(0.5, 0.5)], [(0.5, 0.5)], 0.1, 1.0, outcomes=(np.ones((2, 4)), np.ones((1, 4))))


def test_envelopes_refuse_nonfinite_points_and_ranges():
    """A NaN accuracy would hide every later point of an envelope; a NaN cost would sort anywhere."""
    for points in ([(0.5, float("nan")), (0.6, 0.9)], [(float("nan"), 0.9), (0.6, 0.8)]):
        with pytest.raises(ValueError, match="finite"):
            upper_envelope(points)
        with pytest.raises(ValueError, match="finite"):
            envelope_gap(points, [(0.6, 0.9)], 0.1, 1.0)
    for lo, hi in ((0.1, float("inf")), (float("nan"), 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="lo < hi"):
            envelope_gap([(0.5, 0.9)], [(0.6, 0.9)], lo, hi)


def test_max_neighbour_jump():
    assert max_neighbour_jump([1.0, 0.9, 0.5, 0.45]) == pytest.approx(0.4)
    assert max_neighbour_jump([0.3]) == 0.0


def test_envelope_gap_tolerance_counts_nearly_cheapest_points():
    a, b = [(0.2004, 0.8), (1.0, 0.9)], [(0.2, 0.8), (1.0, 0.9)]
    assert envelope_gap(a, b, 0.2, 1.0)["worst_gap"] == pytest.approx(-0.8)
    out = envelope_gap(a, b, 0.2, 1.0, tol=0.001)
    assert out["worst_gap"] == pytest.approx(0.0) and out["area"] == pytest.approx(0.0)


def test_versus_thresholds_compares_each_leenet_curve_with_the_merged_baselines():
    from leenet.evaluate.compare import GAP_TOL, envelope_gap, versus_thresholds

    def entry(method, param, cost, accuracy):
        return {"method": method, "param": param, "cost": cost, "accuracy": accuracy}

    policies = [entry("leenet", 0.0, 1.0, 0.95), entry("leenet", 0.5, 0.5, 0.93), entry("leenet", 1.0, 0.2, 0.80),
                entry("max_softmax", 0.9, 0.6, 0.94), entry("entropy", 0.3, 0.3, 0.88),
                entry("single_exit", 0, 0.2, 0.80)]
    out = versus_thresholds(policies, lo=0.2)
    assert set(out) == {"leenet"}  # no budget curve in these results
    reference = envelope_gap([(1.0, 0.95), (0.5, 0.93), (0.2, 0.80)], [(0.6, 0.94), (0.3, 0.88)], 0.2, 1.0, GAP_TOL)
    assert out["leenet"]["area"] == pytest.approx(reference["area"])
    assert out["leenet"]["worst_gap"] == pytest.approx(-0.08)  # 0.80 against entropy's 0.88 from cost 0.3
    assert out["leenet"]["max_jump"] == pytest.approx(0.5)  # alpha 0 -> 0.5: cost 1.0 -> 0.5
    policies += [entry("leenet_budget", b, b, 0.80 + 0.15 * (b - 0.2) / 0.8) for b in (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)]
    assert versus_thresholds(policies, lo=0.2)["leenet_budget"]["max_jump"] == pytest.approx(0.2)
    assert versus_thresholds([p for p in policies if p["method"] != "max_softmax" and p["method"] != "entropy"],
                             lo=0.2) == {}
