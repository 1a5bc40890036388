"""The serving benchmark's load generator: Poisson schedules, the SLO rule, loopback only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from loadgen import Result, max_rate_under, open_loop, poisson_schedule, saturation_rate  # noqa: E402


def test_poisson_schedule_has_the_offered_rate() -> None:
    times = poisson_schedule(200.0, 20000, seed=0)
    assert times[0] == 0 and np.all(np.diff(times) >= 0)
    assert len(times) / times[-1] == pytest.approx(200.0, rel=0.03)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential gaps: CV 1


def _result(rate: float, p99_ms: float, failed: int = 0) -> Result:
    latency = np.full(100, p99_ms / 1000)
    latency[:failed] = np.inf
    status = np.where(np.isfinite(latency), 200, 503)
    return Result(rate, 100, latency, status, 100 / rate)  # kept up: 100 requests in 100 / rate seconds


def test_max_rate_is_below_the_first_rate_that_misses_the_slo() -> None:
    ladder = [_result(100, 5), _result(120, 8), _result(144, 30), _result(173, 9)]
    assert max_rate_under(ladder, 0.010) == 120  # 173 passing after 144 failed does not count
    assert max_rate_under(ladder[2:], 0.010) == 0.0
    assert max_rate_under([_result(100, 5, failed=2)], 0.010) == 0.0  # unanswered requests are late


def test_summary_counts_rejections() -> None:
    summary = _result(100, 5, failed=3).summary()
    assert summary["rejected_503"] == 3 and summary["ok"] == 97 and summary["p50_ms"] == 5.0


def test_load_goes_to_the_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        open_loop("10.0.0.1", 80, "/", [b"x"], rate=1, duration=1)


def test_saturation_is_the_last_rate_kept_up_with() -> None:
    ladder = [_result(100, 5), _result(120, 8), _result(144, 9), _result(173, 9)]
    ladder[2].seconds = 100 / 120  # 100 answered in 0.83 s: 120 req/s achieved of 144 offered
    assert saturation_rate(ladder) == 120
    assert saturation_rate([_result(100, 5, failed=1)]) == 0.0
