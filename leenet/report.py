"""Plots, a terminal summary and a self-contained HTML report from a run's ``results.json`` dict.

Accuracies in ``results`` are fractions and costs are mean FLOPs relative to the plain
backbone; both are shown as percentages. Plots use ``matplotlib.figure.Figure`` directly
(no pyplot state), so this module is safe to call from threads and tests.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

CURVES = {  # method -> (legend label, colour)
    "leenet": ("LEENet (learned gates)", "#c0392b"),
    "leenet_budget": ("LEENet, budgets solved directly", "#e67e22"),
    "max_softmax": ("max-softmax threshold", "#2874a6"),
    "entropy": ("entropy threshold", "#239b56"),
}
DEFAULT_THRESHOLD = 0.5  # LEENet's gate decision threshold drawn as the main curve
ZOOM_SPAN = 5.0  # accuracy points below the backbone shown in the zoomed trade-off panel
MAX_ROWS = 8  # LEENet alphas listed in the terminal summary
MAX_FRACTION_ROWS = 24  # LEENet alphas drawn in the exit-fractions chart; more are thinned
LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: float | None, std: float | None = None, digits: int = 1) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.{digits}f}"
    return f"{text} ± {100 * std:.{digits}f}%" if std is not None else f"{text}%"


def _short_pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.095 else f"{value:.1%}"


def _param(value: Any) -> str:
    if value is None:
        return "–"
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _policies(results: dict, method: str) -> list[dict]:
    """Entries of one method sorted by cost; for LEENet only those at its main decision threshold."""
    points = [p for p in results.get("policies", []) if p.get("method") == method]
    thresholds = {p["threshold"] for p in points if p.get("threshold") is not None}
    if method == "leenet" and thresholds:
        main = min(thresholds, key=lambda t: abs(t - DEFAULT_THRESHOLD))
        points = [p for p in points if p.get("threshold", main) == main]
    return sorted(points, key=lambda p: (p["cost"], -p["accuracy"]))


def _same(point: dict, other: dict | None) -> bool:
    """Whether two policy entries are the same setting (method, param and gate threshold)."""
    if other is None or point.get("method") != other.get("method"):
        return False
    a, b = point.get("param"), other.get("param")
    same_param = a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b))
    return same_param and point.get("threshold") == other.get("threshold", point.get("threshold"))


def _subsample(points: list[dict], k: int, keep: dict | None = None) -> list[dict]:
    """At most ``k`` points evenly spread over ``points``, plus ``keep`` if it is one of them."""
    if len(points) <= k:
        return points
    idx = set(np.linspace(0, len(points) - 1, k).round().astype(int).tolist())
    idx |= {i for i, p in enumerate(points) if _same(p, keep)}
    return [points[i] for i in sorted(idx)]


def _exit_colors(n: int) -> list:
    return list(colormaps["viridis"](np.linspace(0.1, 0.85, n)))


def _ink(color: Any) -> str:
    """Black or white, whichever reads better on ``color`` (an RGBA tuple)."""
    return "white" if float(np.dot(color[:3], [0.3, 0.59, 0.11])) < 0.5 else "black"


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, facecolor="white")
    return path


def _curve(ax: Axes, points: list[dict], label: str, color: str, markers: bool, ls: str = "-") -> None:
    """One accuracy-vs-cost line, with a ±std band and (with markers) error bars when present."""
    x = np.array([p["cost"] for p in points])
    y = np.array([100 * p["accuracy"] for p in points])
    sy = np.array([100 * p.get("accuracy_std", 0.0) for p in points])
    sx = np.array([p.get("cost_std", 0.0) for p in points])
    ax.plot(x, y, color=color, lw=2.2 if markers else 1.6, marker="o" if markers else None, ms=5, label=label,
            ls=ls, zorder=4 if markers else 3)
    if sy.any():
        ax.fill_between(x, y - sy, y + sy, color=color, alpha=0.15, lw=0, zorder=2)
    if markers and (sy.any() or sx.any()):
        ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="none", ecolor=color, alpha=0.6, capsize=2, zorder=3)


def _annotate_alphas(ax: Axes, points: list[dict], selected: dict | None) -> None:
    """Label up to 6 visible LEENet points (the selected one first), skipping any that would crowd.

    Each label sits off the curve along its normal, on the upper-left side where no other
    data lies. Call after the axis limits are set.
    """
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pixels = ax.transData.transform([(p["cost"], 100 * p["accuracy"]) for p in points])
    order = [i for i, p in enumerate(points) if _same(p, selected)] + [points.index(p) for p in _subsample(points, 6)]
    placed: list[np.ndarray] = []
    for i, p in ((i, points[i]) for i in order):
        inside = x0 <= p["cost"] <= x1 and y0 <= 100 * p["accuracy"] <= y1
        if not inside or any(np.hypot(*(pixels[i] - q)) < 40 for q in placed):
            continue
        placed.append(pixels[i])
        tangent = pixels[min(i + 1, len(points) - 1)] - pixels[max(i - 1, 0)]
        length = np.hypot(*tangent)  # zero where neighbours coincide: fall back to up-left
        normal = np.array([-tangent[1], tangent[0]]) / length if length > 1 else np.array([-0.7, 0.7])
        normal = normal if normal[1] >= 0 else -normal
        if p["cost"] - x0 < 0.1 * (x1 - x0):
            normal[0] = abs(normal[0])  # no room on the left
        ha = "right" if normal[0] < -0.3 else "left" if normal[0] > 0.3 else "center"
        alphas = sorted(q["param"] for q, q_px in zip(points, pixels) if np.hypot(*(q_px - pixels[i])) < 1)
        text = "α=" + "–".join(dict.fromkeys([_param(alphas[0]), _param(alphas[-1])]))  # a range if they coincide
        ax.annotate(text, (p["cost"], 100 * p["accuracy"]), textcoords="offset points",
                    xytext=tuple(10 * normal), ha=ha, va="bottom",
                    fontsize=8, color=CURVES["leenet"][1], zorder=6, bbox=LABEL_BOX)


def _draw_tradeoff(ax: Axes, results: dict) -> None:
    """Every method of ``results`` on one accuracy-vs-cost axis."""
    main = _policies(results, "leenet")
    for p in [p for p in results["policies"] if p.get("method") == "leenet" and p not in main]:
        ax.scatter(p["cost"], 100 * p["accuracy"], s=9, color=CURVES["leenet"][1], alpha=0.25, zorder=2,
                   label="LEENet, other gate thresholds")
    # the two threshold baselines often coincide: entropy dash-dotted under max-softmax, so both stay visible
    for method, ls in (("entropy", "-."), ("max_softmax", "-"), ("leenet_budget", "--"), ("leenet", "-")):
        if points := _policies(results, method):
            _curve(ax, points, *CURVES[method], markers=method == "leenet", ls=ls)
    acc = 100 * results["backbone"]["accuracy"]
    for e in results["exits"]:
        ax.scatter(e["cost"], 100 * e["accuracy"], marker="s", s=40, color="#626567", zorder=5, label="single exit")
    for p in _policies(results, "oracle"):
        ax.scatter(p["cost"], 100 * p["accuracy"], marker="*", s=220, color="#f4d03f", edgecolor="black", lw=0.8,
                   zorder=6, label="oracle (bound)")
    ax.axhline(acc, ls="--", lw=1, color="black", alpha=0.7, zorder=1)
    ax.axhline(acc - 0.5, ls=":", lw=1, color="gray", zorder=1, label="backbone − 0.5 pt")
    ax.scatter(1.0, acc, marker="D", s=50, color="black", zorder=6, label="backbone")
    if sel := results.get("selected"):
        name = "" if sel.get("method") == "leenet" else f"{sel.get('method')} "
        ax.scatter(sel["cost"], 100 * sel["accuracy"], s=260, facecolor="none", edgecolor="#7d3c98", lw=2,
                   zorder=7, label=f"selected ({name}{_setting(sel)})")
    max_cost = max([1.0] + [p["cost"] for p in results["policies"]] + [e["cost"] for e in results["exits"]])
    ax.set_xlim(0, max(1.05, max_cost + 0.03))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set(xlabel="mean cost (% of backbone FLOPs)", ylabel="test accuracy")
    ax.grid(alpha=0.3)


def _pixels(ax: Axes, x: np.ndarray, y: np.ndarray, step: float = 3.0) -> np.ndarray:
    """Display points every ``step`` pixels along the polyline through data points (x, y in %)."""
    px = ax.transData.transform(np.column_stack([x, y]))
    if len(px) < 2:
        return px
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(px, axis=0).T))])
    at = np.linspace(0, arc[-1], max(2, int(arc[-1] / step) + 1))
    return np.column_stack([np.interp(at, arc, px[:, 0]), np.interp(at, arc, px[:, 1])])


EXIT_LABEL_SPOTS = [(f * dx, f * dy, ha, va) for f in (1, 3) for dx, dy, ha, va in (  # offsets in points, near first
    (5, -5, "left", "top"), (-5, -5, "right", "top"), (5, 5, "left", "bottom"), (-5, 5, "right", "bottom"),
    (8, 0, "left", "center"), (-8, 0, "right", "center"))]


def _annotate_exits(ax: Axes, results: dict, fontsize: float = 8) -> None:
    """Name each single exit next to its marker, on whichever side (of ``EXIT_LABEL_SPOTS``) crosses the
    fewest drawn curves and markers. Call after the axis limits and the layout are set."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    acc = 100 * results["backbone"]["accuracy"]
    curves = [_pixels(ax, np.array([p["cost"] for p in pts]), np.array([100 * p["accuracy"] for p in pts]))
              for m in ("leenet", "leenet_budget", "max_softmax", "entropy") if (pts := _policies(results, m))]
    curves += [_pixels(ax, np.array([x0, x1]), np.array([level, level])) for level in (acc, acc - 0.5)]
    markers = [(e["cost"], 100 * e["accuracy"]) for e in results["exits"]] + [(1.0, acc)]
    if sel := results.get("selected"):
        markers.append((sel["cost"], 100 * sel["accuracy"]))
    obstacles = np.concatenate(curves + [ax.transData.transform(markers)])
    labels = np.array([t.get_window_extent().extents for t in ax.texts]).reshape(-1, 4)  # x0, y0, x1, y1
    box = ax.get_window_extent()
    scale = ax.figure.dpi / 72  # points to pixels
    for e in results["exits"]:
        if abs(e["cost"] - 1) < 0.02 and abs(100 * e["accuracy"] - acc) < 0.1:
            continue  # the final exit sits on the backbone's marker
        if not (x0 <= e["cost"] <= x1 and y0 <= 100 * e["accuracy"] <= y1):
            continue
        anchor = ax.transData.transform((e["cost"], 100 * e["accuracy"]))
        width, height = 0.6 * fontsize * scale * len(e["name"]), 1.3 * fontsize * scale
        costs = []
        for dx, dy, ha, va in EXIT_LABEL_SPOTS:
            left = anchor[0] + dx * scale - {"left": 0, "right": width}[ha]
            bottom = anchor[1] + dy * scale - {"bottom": 0, "top": height, "center": height / 2}[va]
            inside = ((obstacles[:, 0] > left - 2) & (obstacles[:, 0] < left + width + 2)
                      & (obstacles[:, 1] > bottom - 2) & (obstacles[:, 1] < bottom + height + 2))
            covers = ((labels[:, 0] < left + width) & (labels[:, 2] > left)
                      & (labels[:, 1] < bottom + height) & (labels[:, 3] > bottom))
            clipped = left < box.x0 or left + width > box.x1 or bottom < box.y0 or bottom + height > box.y1
            far = abs(dx) > 10  # the outer ring: a leader line ties it to its marker
            costs.append(int(inside.sum()) + 10 * far + 100 * int(covers.sum()) + 1000 * clipped)
        dx, dy, ha, va = EXIT_LABEL_SPOTS[int(np.argmin(costs))]
        leader = {"arrowstyle": "-", "color": "#909497", "lw": 0.6, "shrinkA": 0, "shrinkB": 4} if abs(dx) > 10 else None
        ax.annotate(e["name"], (e["cost"], 100 * e["accuracy"]), textcoords="offset points", xytext=(dx, dy),
                    ha=ha, va=va, fontsize=fontsize, color="#424949", zorder=6, bbox=LABEL_BOX, arrowprops=leader)


def _zoom_window(results: dict) -> tuple[float, float] | None:
    """Accuracy range (in %) close to the backbone, or None when every point already fits near it."""
    backbone = 100 * results["backbone"]["accuracy"]
    accs = [100 * (p["accuracy"] + p.get("accuracy_std", 0.0)) for p in results["policies"]
            if p.get("method") != "oracle"]  # the oracle, far above, stays in the full-range panel only
    accs += [100 * e["accuracy"] for e in results["exits"]] + [backbone]
    if min(accs) >= backbone - 1.5 * ZOOM_SPAN:
        return None
    return backbone - ZOOM_SPAN, max(accs) + 0.08 * (max(accs) - backbone + ZOOM_SPAN)


def plot_tradeoff(results: dict, path: Path) -> Path:
    """Accuracy vs mean cost for LEENet, threshold baselines, single exits, oracle and backbone.

    When some points fall far below the backbone, a second panel zooms into the top
    ``ZOOM_SPAN`` accuracy points, where the operating points live.

    Args:
        results: a run's ``results.json`` dict.
        path: PNG file to write (returned).
    """
    window = _zoom_window(results)
    fig = Figure(figsize=(13, 5.6) if window else (8, 6), layout="constrained")
    axes = fig.subplots(1, 2 if window else 1, squeeze=False)[0]
    for ax in axes:
        _draw_tradeoff(ax, results)
    if window:
        axes[0].set_title("full range")
        axes[1].set(title=f"zoom: within {ZOOM_SPAN:g} pt of the backbone", ylim=window)
    for ax in axes:
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0 if high - low > 4 else 1))
    unique = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # one entry per label
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=5 if window else 3, frameon=False)
    fig.suptitle(f"{results['dataset']} · {results['backbone']['name']}: accuracy vs compute", fontweight="bold")
    fig.draw_without_rendering()  # lay the axes out, so labels are placed where they will be drawn
    for ax in axes:
        _annotate_alphas(ax, _policies(results, "leenet"), results.get("selected"))
        _annotate_exits(ax, results)
    return _save(fig, path)


def _every(points: list[dict], k: int, keep: dict | None = None) -> tuple[list[dict], int]:
    """All ``points`` if at most ``k``, else every n-th (first and last included) plus ``keep``; and n."""
    if len(points) <= k:
        return points, 1
    step = math.ceil((len(points) - 1) / (k - 1))
    idx = set(range(0, len(points), step)) | {len(points) - 1} | {i for i, p in enumerate(points) if _same(p, keep)}
    return [points[i] for i in sorted(idx)], step


def plot_exit_fractions(results: dict, path: Path) -> Path:
    """Stacked bars: the fraction of test samples leaving at each exit, for LEENet at each alpha.

    Up to ``MAX_FRACTION_ROWS`` alphas are all drawn; more are thinned to every n-th (the
    selected one kept), which the title says.

    Args:
        results: a run's ``results.json`` dict.
        path: PNG file to write (returned).
    """
    names, selected = [e["name"] for e in results["exits"]], results.get("selected")
    leenet = sorted(_policies(results, "leenet"), key=lambda p: p["param"])
    shown, step = _every(leenet, MAX_FRACTION_ROWS, selected)
    rows = [(f"α = {_param(p['param'])}", p) for p in shown]
    rows += [("oracle", p) for p in _policies(results, "oracle")[:1]]
    fig = Figure(figsize=(9, 1.7 + (0.42 if len(rows) <= 14 else 0.34) * max(len(rows), 2)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1] - 0.4 * np.array([label == "oracle" for label, _ in rows])  # bound set apart
    left = np.zeros(len(rows))
    for j, color in enumerate(_exit_colors(len(names))):
        widths = np.array([p["exit_fractions"][j] for _, p in rows])
        ax.barh(y, widths, left=left, color=color, edgecolor="white", height=0.75, label=names[j])
        for yi, x0, w in zip(y, left, widths):
            if w >= 0.07:
                ax.text(x0 + w / 2, yi, f"{w:.0%}", ha="center", va="center", fontsize=8, color=_ink(color))
        left += widths
    for yi, (_, p) in zip(y, rows):
        ax.text(1.01, yi, f"{_pct(p['accuracy'])} acc · {_short_pct(p['cost'])} cost", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [label for label, _ in rows])
    for tick, (_, p) in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("bold" if _same(p, selected) else "normal")
    ax.set(xlim=(0, 1), xlabel="fraction of test samples leaving at each exit")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.spines[["top", "right"]].set_visible(False)
    thresholds = {p["threshold"] for p in leenet if p.get("threshold") is not None}
    at = f" at gate threshold {_param(thresholds.pop())}" if len(thresholds) == 1 else ""
    which = (f"all {len(leenet)} alphas" if step == 1 else
             f"{len(shown)} of {len(leenet)} alphas (every {_ordinal(step)}, the last and the selected)") + at
    if any(_same(p, selected) for p in shown):
        which += "; the selected one in bold"
    elif selected and selected.get("method") == "leenet":
        which += f"; the selected model ({_setting(selected)}) is at another gate threshold"
    ax.set_title(f"LEENet, {which}", fontsize=10)
    fig.legend(loc="outside upper center", ncol=len(names), frameon=False, title="exit")
    return _save(fig, path)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def plot_per_exit_accuracy(results: dict, path: Path) -> Path:
    """Dots: test accuracy of each exit's head (± std when present), with the exit's cost under its name.

    The accuracy axis spans the data, not 0–100 %, so close accuracies stay apart; dots, not bars,
    because a bar's length would read as the value from a baseline that is not zero.

    Args:
        results: a run's ``results.json`` dict.
        path: PNG file to write (returned).
    """
    exits, colors = results["exits"], _exit_colors(len(results["exits"]))
    acc = np.array([100 * e["accuracy"] for e in exits])
    std = np.array([100 * e.get("accuracy_std", 0.0) for e in exits])
    backbone = 100 * results["backbone"]["accuracy"]
    low, high = min((acc - std).min(), backbone), max((acc + std).max(), backbone)
    pad = max(0.5, 0.12 * (high - low))
    fig = Figure(figsize=(max(5.0, 1.3 * len(exits) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(exits))
    ax.axhline(backbone, ls="--", color="black", lw=1, zorder=0, label=f"backbone {backbone:.1f}%")
    if std.any():
        ax.errorbar(x, acc, yerr=std, fmt="none", ecolor="#626567", capsize=3, zorder=2)
    ax.scatter(x, acc, s=90, c=colors, edgecolor="black", lw=0.6, zorder=3)
    for xi, e in zip(x, exits):
        ax.annotate(_pct(e["accuracy"]), (xi, 100 * e["accuracy"]), textcoords="offset points", xytext=(10, 0),
                    va="center", fontsize=9, bbox=LABEL_BOX, zorder=4)
    ax.set_xticks(x, [f"{e['name']}\n{_short_pct(e['cost'])} FLOPs" for e in exits])
    ax.set(xlim=(-0.5, len(exits) - 0.5), ylim=(max(0.0, low - pad), min(100.0, high + pad) + 0.3 * pad),
           ylabel="test accuracy (axis does not start at 0)",
           title="accuracy of each exit (all samples leave there)")
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0 if high - low > 4 else 1))
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="best", frameon=False, fontsize=8)
    return _save(fig, path)


def _summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    def row(method: str, param: str, p: dict) -> tuple[str, str, str, str]:
        return method, param, _pct(p["accuracy"], p.get("accuracy_std"), 2), f"{p['cost']:.3f}"

    selected, leenet = results.get("selected"), _policies(results, "leenet")
    rows = [row("backbone", results["backbone"]["name"], {**results["backbone"], "cost": 1.0})]
    rows += [row("single exit", e["name"], e) for e in results["exits"]]
    for p in sorted(_subsample(leenet, MAX_ROWS, selected), key=lambda p: p["param"]):
        rows.append(row("leenet", f"alpha={_param(p['param'])}" + (" *" if _same(p, selected) else ""), p))
    if selected and not any(_same(p, selected) for p in leenet):
        rows.append(row(f"{selected['method']} *", _param(selected.get("param")), selected))
    ref = selected["cost"] if selected else (leenet[len(leenet) // 2]["cost"] if leenet else 1.0)
    for method in ("max_softmax", "entropy"):  # most accurate at about the reference cost, else cheapest
        points = _policies(results, method)
        if fits := [p for p in points if p["cost"] <= ref + 0.01] or points[:1]:
            best = max(fits, key=lambda p: p["accuracy"])
            rows.append(row(method, f"t={_param(best['param'])}", best))
    return rows + [row("oracle", "-", p) for p in _policies(results, "oracle")]


def slower_flag(clock: dict) -> str:
    """Why routing lost, naming each measured speed-up below 1× (``results["wall_clock"]``); "" if none is."""
    slow = [f"{what} ({clock[key]:.2f}x)" for what, key in (
        (f"throughput at batch {clock.get('throughput_batch', '?')}", "measured_speedup"),
        ("latency at batch 1", "latency_speedup")) if clock.get(key) is not None and clock[key] < 1]
    if not slow:
        return ""
    overhead = ("per-exit kernel launches and syncs cost" if str(clock.get("device", "")).startswith("cuda")
                else "the routed pass's per-exit overhead (running gates, routing the batch) costs")
    return (f"slower than the backbone in {' and '.join(slow)}: {overhead} more than the FLOPs saved, as for small "
            "networks; see the README's wall-clock notes")


def speed_line(clock: dict) -> str:
    """The run's wall-clock measurement (``results["wall_clock"]``) in one terminal line."""
    line = (f"measured on {clock['device']}: {clock['measured_speedup']:.2f}x the backbone's throughput at batch "
            f"{clock['throughput_batch']}, {clock['latency_speedup']:.2f}x its speed at batch 1 "
            f"(FLOPs say {clock['flops_speedup']:.2f}x)")
    return line + (f"; {flag}" if (flag := slower_flag(clock)) else "")


def summary_table(results: dict) -> str:
    """A fixed-width text table for the terminal: backbone, exits, LEENet alphas, baselines, oracle.

    More than ``MAX_ROWS`` alphas are subsampled (the selected one always stays, marked ``*``);
    each threshold baseline shows its most accurate point at about the selected cost.

    Args:
        results: a run's ``results.json`` dict.

    Returns:
        The table (method, param, accuracy, cost), a blank line and notes on what its rows are,
        without a trailing newline.
    """
    header = ("method", "param", "accuracy", "cost")
    rows = _summary_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    table = "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])
    return table + "\n\n" + "\n".join(_summary_notes(results, shown=sum(r[0] == "leenet" for r in rows)))


def _summary_notes(results: dict, shown: int) -> list[str]:
    """What the summary's rows are: which alphas (``shown`` of them), which thresholds, what the star marks."""
    selected, leenet = results.get("selected"), _policies(results, "leenet")
    notes = [f"test split; cost = mean share of the backbone's FLOPs; leenet: {shown} of {len(leenet)} alphas"
             + (f" at gate threshold {_param(leenet[0]['threshold'])}" if leenet and "threshold" in leenet[0] else "")]
    notes.append("max_softmax, entropy: each baseline's most accurate threshold at about the "
                 + ("saved model's" if selected else "middle alpha's") + " cost (picked on test, which flatters them)")
    if selected:
        notes.append(f"* the saved model ({_setting(selected)}): {selected.get('reason', 'chosen by the run')}")
    return notes


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _flops(n: float | None) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 0)):
        if n is not None and n >= size:
            return f"{n / (size or 1):.3g} {unit}FLOPs"
    return "–"


def _header(results: dict) -> str:
    bb, info = results["backbone"], results.get("dataset_info", {})
    facts = [f"backbone <b>{_e(bb['name'])}</b>", f"accuracy <b>{_e(_pct(bb['accuracy'], digits=2))}</b>",
             f"<b>{_e(_flops(bb.get('flops')))}</b> per image", f"{len(results['exits'])} exits"]
    facts += [f"{_e(k.removeprefix('num_'))} {_e(v)}" for k, v in info.items() if k.startswith("num_")]
    return f"<h1>LEENet report · {_e(results['dataset'])}</h1><p class='facts'>{' · '.join(facts)}</p>"


def _setting(point: dict) -> str:
    """A policy's setting in words: ``α=0.85, t=0.4`` for LEENet (cost weight, gate decision threshold)."""
    method, param, threshold = point.get("method"), _param(point.get("param")), point.get("threshold")
    if method in ("leenet", "leenet_budget") and point.get("param") is not None:
        name = "α=" if method == "leenet" else "budget "
        return name + param + ("" if threshold is None else f", t={_param(threshold)}")
    return {"max_softmax": f"t={param}", "entropy": f"t={param}"}.get(method, param)


def _key_numbers(results: dict) -> str:
    """Cards (label, value, note) for each key number present in ``results``."""
    cards = []
    if sel := results.get("selected"):
        drop = 100 * (sel["accuracy"] - results["backbone"]["accuracy"])
        method = "" if sel.get("method") == "leenet" else f"{sel.get('method', '')} "
        reason = sel.get("reason", "")
        legend = "α: cost weight, t: gate decision threshold" if not method else ""
        cards += [("selected model", method + _setting(sel), ". ".join(filter(None, [reason, legend]))),
                  ("selected accuracy", _pct(sel["accuracy"], sel.get("accuracy_std"), 2),
                   f"{drop:+.2f} pt vs backbone, on test"),
                  ("mean cost", f"{sel['cost']:.1%}", "of backbone FLOPs, on test"),
                  ("FLOPs speed-up", f"{1 / max(sel['cost'], 1e-9):.2f}×", "backbone FLOPs / mean cost")]
    wall = results.get("wall_clock") or {}
    if wall.get("measured_speedup") is not None:
        latency = f"; batch-1 latency {wall['latency_speedup']:.2f}×" if wall.get("latency_speedup") is not None else ""
        slower = f"; {flag}" if (flag := slower_flag(wall)) else ""
        cards.append(("measured speed-up", f"{wall['measured_speedup']:.2f}×",
                      f"throughput, {wall.get('device', '?')}, batch {wall.get('throughput_batch', '?')}{latency}{slower}"))
    if budget := results.get("budget"):
        target, kind = budget.get("target", 0.0), budget.get("kind", "")
        goal = f"accuracy drop ≤ {100 * target:g} pt" if "drop" in kind else f"mean cost ≤ {target:.0%} FLOPs"
        held = {True: "met on test", False: "NOT met on test"}.get(budget.get("met_on_test"), "unreachable")
        cards.append((f"budget: {goal}", held, budget.get("message", "")))
    if check := results.get("routed_check"):
        ok = check.get("matches_simulation")
        cards.append(("routed forward", "matches" if ok else "MISMATCH", "real routed inference vs simulated policy"))
    html_cards = "".join(f"<div class='card{' warn' if 'slower than' in c else ''}'><div class='label'>{_e(a)}</div>"
                         f"<div class='value'>{_e(b)}</div><div class='sub'>{_e(c)}</div></div>" for a, b, c in cards)
    return f"<div class='cards'>{html_cards}</div>" if html_cards else ""


METHOD_NAMES = {"leenet": "LEENet", "leenet_budget": "LEENet (budget)", "max_softmax": "max-softmax",
                "entropy": "entropy", "single_exit": "single exit", "oracle": "oracle"}


def _budget_names(points: list[dict]) -> str:
    """One label for operating points that chose the same setting: ``accuracy at ≤ 25%, 50% FLOPs``."""
    parts: dict[str, list[str]] = {}
    for p in points:
        if p.get("kind") == "max_cost" and p.get("target") is not None:
            parts.setdefault("accuracy at ≤ {} FLOPs", []).append(f"{p['target']:.0%}")
        elif p.get("kind") == "max_drop" and p.get("target") is not None:
            parts.setdefault("cost at ≤ {} pt drop", []).append(f"{100 * p['target']:g}")
        else:
            parts.setdefault("{}", []).append(str(p.get("name", "")))
    return "; ".join(form.format(", ".join(values)) for form, values in parts.items())


def _operating_points(results: dict) -> str:
    """Budgets solved on calibration, one row per method and setting: consecutive budgets that chose the
    same setting and fared the same on test share a row."""
    if not (points := results.get("operating_points")):
        return ""
    selected, groups = results.get("selected"), []
    seeds = len(results["seeds"]) if isinstance(results.get("seeds"), list) else None  # a multi-seed benchmark
    for p in points:
        prev = groups[-1][-1] if groups else None
        if prev is None:
            same = False
        elif p.get("reachable", True):
            same = _same(p, prev)  # method, param and gate threshold
        else:
            same = p.get("method") == prev.get("method") and not prev.get("reachable", True)
        if same and _held(p, seeds) == _held(prev, seeds):
            groups[-1].append(p)
        else:
            groups.append([p])
    rows = []
    for group in groups:
        p = group[0]
        if not p.get("reachable", True):
            rows.append([_budget_names(group), METHOD_NAMES.get(p.get("method"), p.get("method", "")), "–", "–", "–",
                         "unreachable on calibration"])
            continue
        mark = " (the selected setting)" if _same(p, selected) else ""
        setting = ("seed 0: " if seeds else "") + _setting(p) + mark
        rows.append([_budget_names(group), METHOD_NAMES.get(p.get("method"), p.get("method", "")), setting,
                     _pct(p.get("accuracy"), p.get("accuracy_std"), 2), _pct(p.get("cost"), p.get("cost_std")),
                     _held(p, seeds)])
    slack = results.get("budget_margin")
    slack = "" if slack is None else f" (each keeping {slack:g} standard errors of slack)"
    note = (f"the best setting for each budget, chosen on calibration{slack} and reported on test; budgets that chose "
            "the same setting share a row. α: LEENet's cost weight; t: the decision threshold (LEENet: on its gates' "
            "exit probability; baselines: on the confidence score)")
    if seeds:
        note += (f". Mean ± std over {seeds} seeds: each seed chooses its own setting (seed 0's is shown) and the "
                 "last column counts the seeds whose budget held")
    return f"<h2>Operating points</h2><p class='note'>{_e(note)}</p>" + _table(
        ["budgets", "method", "setting", "accuracy", "cost", "budget held on test"], rows)


def _held(point: dict, seeds: int | None) -> str:
    """Whether an operating point's budget held on test: yes / NO, or in how many of ``seeds`` seeds."""
    if seeds and point.get("met_on_test_seeds") is not None:
        held = point["met_on_test_seeds"]
        return f"{held} / {seeds} seeds" if held == seeds else f"{held} / {seeds} seeds (NOT all)"
    return {True: "yes", False: "NO"}.get(point.get("met_on_test"), "–")


def _versus_thresholds(results: dict) -> str:
    if not (comparison := results.get("versus_thresholds")):
        return ""
    names = {"leenet": "α sweep (decision threshold 0.5)", "leenet_budget": "budgets solved directly"}
    rows = [[names.get(method, method), f"{100 * c['area']:+.2f}",
             f"{100 * c['worst_gap']:+.2f} pt at {_pct(c['worst_cost'], digits=0)}", f"{c['max_jump']:.3f}"]
            for method, c in comparison.items()]
    return ("<h2>LEENet against thresholds</h2><p class='note'>upper envelopes on the test split against the "
            "better of max-softmax and entropy, from the first exit's cost to the backbone's; positive = "
            "LEENet more accurate</p>" + _table(
                ["LEENet curve", "area between envelopes (pt × cost)", "worst point",
                 "largest cost jump between neighbours"], rows))


def _policy_param(point: dict, exit_names: list[str]) -> str:
    """A policy's parameter for a table; a single exit's index becomes the exit's name."""
    index = point.get("param")
    if point.get("method") == "single_exit" and isinstance(index, int) and 0 <= index < len(exit_names):
        return exit_names[index]
    return _param(index)


def _policies_section(results: dict) -> str:
    names = [e["name"] for e in results["exits"]]
    gated = any("threshold" in p for p in results["policies"])  # LEENet's gate decision threshold
    rows = [[p["method"], _policy_param(p, names), *([_param(p.get("threshold"))] if gated else []),
             _pct(p["accuracy"], p.get("accuracy_std"), 2), _pct(p["cost"], p.get("cost_std")),
             *(_pct(f, digits=0) for f in p.get("exit_fractions") or [None] * len(names))]
            for p in results["policies"]]
    headers = ["method", "param (α, t or exit)", *(["gate threshold"] if gated else []), "accuracy", "cost", *names]
    return (f"<h2>Policies</h2><details><summary>all {len(rows)} evaluated policies (test split; exit columns: "
            f"fraction of samples leaving there)</summary>{_table(headers, rows)}</details>")


def _key_value(title: str, mapping: dict | None, headers: list[str], fmt: Any = _param, total: bool = False) -> str:
    if not mapping:
        return ""
    rows = [[k.replace("_", " "), fmt(v)] for k, v in mapping.items()]
    if total and not any(k.startswith("total") for k in mapping):  # a recorded total is not summed again
        rows.append(["total", fmt(sum(v for v in mapping.values() if isinstance(v, (int, float))))])
    return f"<h2>{_e(title)}</h2>" + _table(headers, rows)


WALL_CLOCK = {  # results["wall_clock"] key -> (label, value format)
    "device": ("device", "{}"),
    "throughput_batch": ("throughput batch size", "{:,} images"),
    "latency_samples": ("latency measured over", "{:,} images, one at a time"),
    "backbone_throughput": ("backbone throughput", "{:,.0f} images/s"),
    "leenet_throughput": ("LEENet throughput", "{:,.0f} images/s"),
    "measured_speedup": ("throughput speed-up", "{:.2f}×"),
    "backbone_latency_ms": ("backbone latency at batch 1", "{:.3g} ms per image"),
    "leenet_latency_ms": ("LEENet latency at batch 1", "{:.3g} ms per image"),
    "latency_speedup": ("latency speed-up at batch 1", "{:.2f}×"),
    "flops_speedup": ("FLOPs speed-up", "{:.2f}×"),
}


def _wall_clock(results: dict) -> str:
    """The wall-clock measurement with readable labels and units (unknown keys as they are)."""
    if not (clock := results.get("wall_clock")):
        return ""
    keys = [k for k in WALL_CLOCK if k in clock] + [k for k in clock if k not in WALL_CLOCK]
    rows = []
    for key in keys:
        label, form = WALL_CLOCK.get(key, (key.replace("_", " "), "{}"))
        try:
            rows.append([label, form.format(clock[key])])
        except (TypeError, ValueError):  # a value of an unexpected type
            rows.append([label, _param(clock[key])])
    note = "routed LEENet (the selected model) vs the plain backbone on test images; speed-ups above 1× are faster"
    flag = f"<p class='note'><b>{_e(flag)}</b></p>" if (flag := slower_flag(clock)) else ""
    return f"<h2>Wall clock</h2><p class='note'>{_e(note)}</p>{flag}" + _table(["measure", "value"], rows)


def _config_value(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_config_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_config_value, value))
    return "none" if value is None else _param(value)


def _resolved(results: dict) -> dict[str, tuple[Any, str]]:
    """Setting (``section.key``) -> (the value the run used, where it came from) for settings a run may leave
    unset (None: a dataset default), from what ``results`` recorded; runs older than a record show none."""
    config, backbone, info = results["config"], results.get("backbone", {}), results.get("dataset_info", {})
    gates, heads, trained = results.get("gates") or {}, results.get("heads") or {}, backbone.get("training") or {}
    dataset, unused = "(dataset default)", "(unused: the backbone was not trained here)"
    resolved = {
        "model.arch": (backbone.get("name"), dataset),
        "model.head": (heads.get("kind"), dataset),
        "model.exits": ([e["name"] for e in results.get("exits", [])[:-1]], "(the backbone's default exits)"),
        "model.gate": (gates.get("inputs"), dataset),
        "model.num_classes": (info.get("num_classes"), "(the dataset's)"),
        "model.weights": ("none", "(backbone trained here)"),
        "data.data_dir": ("the dataset's default place", ""),
        "data.image_size": ((info.get("image_shape") or [None])[-1], "(the dataset's)"),
        "train.epochs": (trained.get("epochs"), dataset if trained.get("epochs") else "(weights used as they are)"),
        "train.lr": (trained.get("lr") or ("–" if "lr" in trained else None), dataset if trained.get("lr") else unused),
        "train.precision": (trained.get("precision") or ("–" if "precision" in trained else None),
                            dataset if trained.get("precision") else unused),
        "train.head_epochs": (heads.get("epochs"), dataset),
        "train.gates": (gates.get("training"), dataset),
    }
    if device := (results.get("wall_clock") or {}).get("device"):
        resolved["device"] = (config.get("device"), f"(ran on {device})")
    if sel := results.get("selected"):
        resolved["alpha"] = (_setting(sel), f"(chosen: {sel.get('reason', 'by the run')})")
    return {key: value for key, value in resolved.items() if value[0] is not None}


def _config(results: dict) -> str:
    """The run's configuration, one row a setting; unset (null) settings show the value the run resolved."""
    if not isinstance(results.get("config"), dict):
        return ""
    flat = {}
    for key, value in results["config"].items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    resolved = _resolved(results)
    rows = [[key, _config_value(value) if (value is not None and key != "device") or key not in resolved
             else f"{_config_value(resolved[key][0])} {resolved[key][1]}".strip()] for key, value in flat.items()]
    return ("<h2>Config</h2><details><summary>run configuration (settings left unset show the value the run used; "
            "config.json in the run directory keeps the request as given)</summary>"
            + _table(["setting", "value"], rows) + "</details>")


def write_report(results: dict, out_dir: Path) -> Path:
    """Write the plots and a self-contained ``report.html`` (images embedded) into ``out_dir``.

    Args:
        results: a run's ``results.json`` dict; optional sections absent from it are omitted.
        out_dir: directory for ``tradeoff.png``, ``per_exit_accuracy.png``, ``exit_fractions.png``
            (when there are LEENet policies) and ``report.html``; created if missing.

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    exits = [[e["name"], _flops(e.get("flops")), _pct(e["cost"]), _pct(e["accuracy"], digits=2)]
             for e in results["exits"]]
    sections = [
        _header(results), _key_numbers(results), "<h2>Accuracy vs compute</h2>",
        _img(plot_tradeoff(results, out_dir / "tradeoff.png"), "accuracy vs compute"), _operating_points(results),
        _versus_thresholds(results), "<h2>Exits</h2>", _table(["exit", "FLOPs", "cost", "accuracy"], exits),
        _img(plot_per_exit_accuracy(results, out_dir / "per_exit_accuracy.png"), "per-exit accuracy"),
    ]
    if _policies(results, "leenet"):
        fractions = plot_exit_fractions(results, out_dir / "exit_fractions.png")
        sections += ["<h2>Where samples leave</h2>", _img(fractions, "exit fractions")]
    sections += [_policies_section(results),
                 _wall_clock(results),
                 _key_value("Timings", results.get("timings"), ["phase", "seconds"], lambda v: f"{v:.2f}", total=True)]
    sections.append(_config(results))
    footer = f"{_e(results.get('flops_convention', ''))} · leenet {_e(results.get('leenet_version', ''))}"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LEENet · {_e(results['dataset'])}"
            f"</title><style>{CSS}</style></head><body>{''.join(sections)}<footer>{footer}</footer></body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1c2833;max-width:1200px;
margin:2em auto;padding:0 1.5em} h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d5d8dc} .facts,.note,.card .sub{color:#566573}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1.2em 0} .card .sub{font-size:.85em}
.card{background:#f4f6f7;border-left:4px solid #c0392b;padding:.7em 1em;min-width:11em;max-width:28em}
.card .label{font-size:.8em;text-transform:uppercase;color:#566573} .card .value{font-size:1.6em;font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums} th{background:#f4f6f7}
th,td{padding:.3em .8em;border-bottom:1px solid #e5e8e8;text-align:right} th:first-child,td:first-child{text-align:left}
img{max-width:100%;display:block;margin:.8em 0} summary{cursor:pointer;color:#2874a6}
pre{background:#f4f6f7;padding:1em;overflow:auto;font-size:.85em} footer{margin-top:3em;color:#909497;font-size:.8em}
"""
