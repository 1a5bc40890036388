"""What the plots, the HTML page and the terminal summary share: which policies to show, and number formats."""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Union

import numpy as np

from leenet.report.parse import build
from leenet.report.results import OperatingPoint, Policy, Results, WallClock

DEFAULT_THRESHOLD = 0.5  # LEENet's gate decision threshold drawn as the main curve
Setting = Union[Policy, OperatingPoint]  # anything with a method, a param and a gate threshold


def as_results(results: Results | Mapping[str, Any]) -> Results:
    """``results`` as the typed schema; a plain results dict (any known version) is read first."""
    return results if isinstance(results, Results) else Results.from_dict(results)


def as_wall_clock(clock: WallClock | Mapping[str, Any]) -> WallClock:
    return clock if isinstance(clock, WallClock) else build(WallClock, clock, "wall_clock")


def esc(value: Any) -> str:
    return html.escape(str(value))


def pct(value: float | None, std: float | None = None, digits: int = 1) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.{digits}f}"
    return f"{text} ± {100 * std:.{digits}f}%" if std is not None else f"{text}%"


def short_pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.095 else f"{value:.1%}"


def param(value: Any) -> str:
    if value is None:
        return "–"
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def policies(results: Results, method: str) -> list[Policy]:
    """Entries of one method sorted by cost; for LEENet only those at its main decision threshold."""
    points = [p for p in results.policies if p.method == method]
    thresholds = {p.threshold for p in points if p.threshold is not None}
    if method == "leenet" and thresholds:
        main = min(thresholds, key=lambda t: abs(t - DEFAULT_THRESHOLD))
        points = [p for p in points if p.threshold is None or p.threshold == main]
    return sorted(points, key=lambda p: (p.cost, -p.accuracy))


def same(point: Setting, other: Setting | None) -> bool:
    """Whether two entries are the same setting (method, param and gate threshold; no threshold matches any)."""
    if other is None or point.method != other.method:
        return False
    a, b = point.param, other.param
    same_param = a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b))
    return same_param and (other.threshold is None or point.threshold == other.threshold)


def subsample(points: list, k: int, keep: Setting | None = None) -> list:
    """At most ``k`` points evenly spread over ``points``, plus ``keep`` if it is one of them."""
    if len(points) <= k:
        return points
    idx = set(np.linspace(0, len(points) - 1, k).round().astype(int).tolist())
    idx |= {i for i, p in enumerate(points) if same(p, keep)}
    return [points[i] for i in sorted(idx)]


def setting(point: Setting) -> str:
    """A policy's setting in words: ``α=0.85, t=0.4`` for LEENet (cost weight, gate decision threshold)."""
    method, value, threshold = point.method, param(point.param), point.threshold
    if method in ("leenet", "leenet_budget") and point.param is not None:
        name = "α=" if method == "leenet" else "budget "
        return name + value + ("" if threshold is None else f", t={param(threshold)}")
    return {"max_softmax": f"t={value}", "entropy": f"t={value}"}.get(method, value)


def flops(n: float | None) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 0)):
        if n is not None and n >= size:
            return f"{n / (size or 1):.3g} {unit}FLOPs"
    return "–"


def slower_flag(clock: WallClock | Mapping[str, Any]) -> str:
    """Why routing lost, naming each measured speed-up below 1× (the run's wall clock); "" if none is."""
    clock = as_wall_clock(clock)
    batch = "?" if clock.throughput_batch is None else clock.throughput_batch
    slow = [f"{what} ({value:.2f}x)" for what, value in (
        (f"throughput at batch {batch}", clock.measured_speedup),
        ("latency at batch 1", clock.latency_speedup)) if value is not None and value < 1]
    if not slow:
        return ""
    overhead = ("per-exit kernel launches and syncs cost" if str(clock.device or "").startswith("cuda")
                else "the routed pass's per-exit overhead (running gates, routing the batch) costs")
    return (f"slower than the backbone in {' and '.join(slow)}: {overhead} more than the FLOPs saved, as for small "
            "networks; see docs/benchmarks/routing-speed.md")
