"""The report's plots: accuracy vs compute, exit fractions per alpha, per-exit accuracy.

Each takes a :class:`~leenet.report.results.Results` and writes one PNG. Plots use
``matplotlib.figure.Figure`` directly (no pyplot state), so they are safe from threads and tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leenet.report.common import param, pct, policies, same, setting, short_pct, subsample
from leenet.report.results import Policy, Results, Selected

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVES = {  # method -> (legend label, colour)
    "leenet": ("LEENet (learned gates)", "#c0392b"),
    "leenet_budget": ("LEENet, budgets solved directly", "#e67e22"),
    "max_softmax": ("max-softmax threshold", "#2874a6"),
    "entropy": ("entropy threshold", "#239b56"),
}
ZOOM_SPAN = 5.0  # accuracy points below the backbone shown in the zoomed trade-off panel
MAX_FRACTION_ROWS = 24  # LEENet alphas drawn in the exit-fractions chart; more are thinned
LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}
EXIT_LABEL_SPOTS = [(f * dx, f * dy, ha, va) for f in (1, 3) for dx, dy, ha, va in (  # offsets in points, near first
    (5, -5, "left", "top"), (-5, -5, "right", "top"), (5, 5, "left", "bottom"), (-5, 5, "right", "bottom"),
    (8, 0, "left", "center"), (-8, 0, "right", "center"))]


def exit_colors(n: int) -> list:
    from matplotlib import colormaps  # matplotlib is loaded by the first drawing, not with LEENet

    return list(colormaps["viridis"](np.linspace(0.1, 0.85, n)))


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure with constrained layout, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def percent_axis(axis: Any, whole: float, decimals: int) -> None:
    """Label ``axis`` (``ax.xaxis``, ``ax.yaxis``) in percent of ``whole``."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(whole, decimals=decimals))


def ink(color: Any) -> str:
    """Black or white, whichever reads better on ``color`` (an RGBA tuple)."""
    return "white" if float(np.dot(color[:3], [0.3, 0.59, 0.11])) < 0.5 else "black"


def save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, facecolor="white")
    return path


def _curve(ax: Axes, points: list[Policy], label: str, color: str, markers: bool, ls: str = "-") -> None:
    """One accuracy-vs-cost line, with a ±std band and (with markers) error bars when present."""
    x = np.array([p.cost for p in points])
    y = np.array([100 * p.accuracy for p in points])
    sy = np.array([100 * (p.accuracy_std or 0.0) for p in points])
    sx = np.array([p.cost_std or 0.0 for p in points])
    ax.plot(x, y, color=color, lw=2.2 if markers else 1.6, marker="o" if markers else None, ms=5, label=label,
            ls=ls, zorder=4 if markers else 3)
    if sy.any():
        ax.fill_between(x, y - sy, y + sy, color=color, alpha=0.15, lw=0, zorder=2)
    if markers and (sy.any() or sx.any()):
        ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="none", ecolor=color, alpha=0.6, capsize=2, zorder=3)


def _annotate_alphas(ax: Axes, points: list[Policy], selected: Selected | None) -> None:
    """Label up to 6 visible LEENet points (the selected one first), skipping any that would crowd.

    Each label sits off the curve along its normal, on the upper-left side where no other
    data lies. Call after the axis limits are set.
    """
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pixels = ax.transData.transform([(p.cost, 100 * p.accuracy) for p in points])
    order = [i for i, p in enumerate(points) if same(p, selected)] + [points.index(p) for p in subsample(points, 6)]
    placed: list[np.ndarray] = []
    for i, p in ((i, points[i]) for i in order):
        inside = x0 <= p.cost <= x1 and y0 <= 100 * p.accuracy <= y1
        if not inside or any(np.hypot(*(pixels[i] - q)) < 40 for q in placed):
            continue
        placed.append(pixels[i])
        tangent = pixels[min(i + 1, len(points) - 1)] - pixels[max(i - 1, 0)]
        length = np.hypot(*tangent)  # zero where neighbours coincide: fall back to up-left
        normal = np.array([-tangent[1], tangent[0]]) / length if length > 1 else np.array([-0.7, 0.7])
        normal = normal if normal[1] >= 0 else -normal
        if p.cost - x0 < 0.1 * (x1 - x0):
            normal[0] = abs(normal[0])  # no room on the left
        ha = "right" if normal[0] < -0.3 else "left" if normal[0] > 0.3 else "center"
        alphas = sorted(q.param for q, q_px in zip(points, pixels) if np.hypot(*(q_px - pixels[i])) < 1)
        text = "α=" + "–".join(dict.fromkeys([param(alphas[0]), param(alphas[-1])]))  # a range if they coincide
        ax.annotate(text, (p.cost, 100 * p.accuracy), textcoords="offset points",
                    xytext=tuple(10 * normal), ha=ha, va="bottom",
                    fontsize=8, color=CURVES["leenet"][1], zorder=6, bbox=LABEL_BOX)


def draw_tradeoff(ax: Axes, results: Results) -> None:
    """Every method of ``results`` on one accuracy-vs-cost axis."""
    main = policies(results, "leenet")
    for p in [p for p in results.policies if p.method == "leenet" and p not in main]:
        ax.scatter(p.cost, 100 * p.accuracy, s=9, color=CURVES["leenet"][1], alpha=0.25, zorder=2,
                   label="LEENet, other gate thresholds")
    # the two threshold baselines often coincide: entropy dash-dotted under max-softmax, so both stay visible
    for method, ls in (("entropy", "-."), ("max_softmax", "-"), ("leenet_budget", "--"), ("leenet", "-")):
        if points := policies(results, method):
            _curve(ax, points, *CURVES[method], markers=method == "leenet", ls=ls)
    acc = 100 * results.backbone.accuracy
    for e in results.exits:
        ax.scatter(e.cost, 100 * e.accuracy, marker="s", s=40, color="#626567", zorder=5, label="single exit")
    for p in policies(results, "oracle"):
        ax.scatter(p.cost, 100 * p.accuracy, marker="*", s=220, color="#f4d03f", edgecolor="black", lw=0.8,
                   zorder=6, label="oracle (bound)")
    ax.axhline(acc, ls="--", lw=1, color="black", alpha=0.7, zorder=1)
    ax.axhline(acc - 0.5, ls=":", lw=1, color="gray", zorder=1, label="backbone − 0.5 pt")
    ax.scatter(1.0, acc, marker="D", s=50, color="black", zorder=6, label="backbone")
    if sel := results.selected:
        name = "" if sel.method == "leenet" else f"{sel.method} "
        ax.scatter(sel.cost, 100 * sel.accuracy, s=260, facecolor="none", edgecolor="#7d3c98", lw=2,
                   zorder=7, label=f"selected ({name}{setting(sel)})")
    max_cost = max([1.0] + [p.cost for p in results.policies] + [e.cost for e in results.exits])
    ax.set_xlim(0, max(1.05, max_cost + 0.03))
    percent_axis(ax.xaxis, 1.0, 0)
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


def _annotate_exits(ax: Axes, results: Results, fontsize: float = 8) -> None:
    """Name each single exit next to its marker, on whichever side (of ``EXIT_LABEL_SPOTS``) crosses the
    fewest drawn curves and markers. Call after the axis limits and the layout are set."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    acc = 100 * results.backbone.accuracy
    curves = [_pixels(ax, np.array([p.cost for p in pts]), np.array([100 * p.accuracy for p in pts]))
              for m in ("leenet", "leenet_budget", "max_softmax", "entropy") if (pts := policies(results, m))]
    curves += [_pixels(ax, np.array([x0, x1]), np.array([level, level])) for level in (acc, acc - 0.5)]
    markers = [(e.cost, 100 * e.accuracy) for e in results.exits] + [(1.0, acc)]
    if sel := results.selected:
        markers.append((sel.cost, 100 * sel.accuracy))
    obstacles = np.concatenate(curves + [ax.transData.transform(markers)])
    labels = np.array([t.get_window_extent().extents for t in ax.texts]).reshape(-1, 4)  # x0, y0, x1, y1
    box = ax.get_window_extent()
    scale = ax.figure.dpi / 72  # points to pixels
    for e in results.exits:
        if abs(e.cost - 1) < 0.02 and abs(100 * e.accuracy - acc) < 0.1:
            continue  # the final exit sits on the backbone's marker
        if not (x0 <= e.cost <= x1 and y0 <= 100 * e.accuracy <= y1):
            continue
        anchor = ax.transData.transform((e.cost, 100 * e.accuracy))
        width, height = 0.6 * fontsize * scale * len(e.name), 1.3 * fontsize * scale
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
        leader = {"arrowstyle": "-", "color": "#909497", "lw": 0.6, "shrinkA": 0, "shrinkB": 4}
        leader = leader if abs(dx) > 10 else None
        ax.annotate(e.name, (e.cost, 100 * e.accuracy), textcoords="offset points", xytext=(dx, dy),
                    ha=ha, va=va, fontsize=fontsize, color="#424949", zorder=6, bbox=LABEL_BOX, arrowprops=leader)


def zoom_window(results: Results) -> tuple[float, float] | None:
    """Accuracy range (in %) close to the backbone, or None when every point already fits near it."""
    backbone = 100 * results.backbone.accuracy
    accs = [100 * (p.accuracy + (p.accuracy_std or 0.0)) for p in results.policies
            if p.method != "oracle"]  # the oracle, far above, stays in the full-range panel only
    accs += [100 * e.accuracy for e in results.exits] + [backbone]
    if min(accs) >= backbone - 1.5 * ZOOM_SPAN:
        return None
    return backbone - ZOOM_SPAN, max(accs) + 0.08 * (max(accs) - backbone + ZOOM_SPAN)


def plot_tradeoff(results: Results, path: Path) -> Path:
    """Accuracy vs mean cost for LEENet, threshold baselines, single exits, oracle and backbone.

    When some points fall far below the backbone, a second panel zooms into the top
    ``ZOOM_SPAN`` accuracy points, where the operating points live. Returns ``path`` (a PNG).
    """
    window = zoom_window(results)
    fig = new_figure(figsize=(13, 5.6) if window else (8, 6))
    axes = fig.subplots(1, 2 if window else 1, squeeze=False)[0]
    for ax in axes:
        draw_tradeoff(ax, results)
    if window:
        axes[0].set_title("full range")
        axes[1].set(title=f"zoom: within {ZOOM_SPAN:g} pt of the backbone", ylim=window)
    for ax in axes:
        low, high = ax.get_ylim()
        percent_axis(ax.yaxis, 100, 0 if high - low > 4 else 1)
    unique = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # one entry per label
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=5 if window else 3, frameon=False)
    fig.suptitle(f"{results.dataset} · {results.backbone.name}: accuracy vs compute", fontweight="bold")
    fig.draw_without_rendering()  # lay the axes out, so labels are placed where they will be drawn
    for ax in axes:
        _annotate_alphas(ax, policies(results, "leenet"), results.selected)
        _annotate_exits(ax, results)
    return save(fig, path)


def _every(points: list[Policy], k: int, keep: Selected | None = None) -> tuple[list[Policy], int]:
    """All ``points`` if at most ``k``, else every n-th (first and last included) plus ``keep``; and n."""
    if len(points) <= k:
        return points, 1
    step = math.ceil((len(points) - 1) / (k - 1))
    idx = set(range(0, len(points), step)) | {len(points) - 1} | {i for i, p in enumerate(points) if same(p, keep)}
    return [points[i] for i in sorted(idx)], step


def plot_exit_fractions(results: Results, path: Path) -> Path:
    """Stacked bars: the fraction of test samples leaving at each exit, for LEENet at each alpha.

    Up to ``MAX_FRACTION_ROWS`` alphas are all drawn; more are thinned to every n-th (the
    selected one kept), which the title says. Returns ``path`` (a PNG).
    """
    names, selected = [e.name for e in results.exits], results.selected
    leenet = sorted(policies(results, "leenet"), key=lambda p: p.param)
    shown, step = _every(leenet, MAX_FRACTION_ROWS, selected)
    rows = [(f"α = {param(p.param)}", p) for p in shown]
    rows += [("oracle", p) for p in policies(results, "oracle")[:1]]
    fig = new_figure(figsize=(9, 1.7 + (0.42 if len(rows) <= 14 else 0.34) * max(len(rows), 2)))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1] - 0.4 * np.array([label == "oracle" for label, _ in rows])  # bound set apart
    left = np.zeros(len(rows))
    for j, color in enumerate(exit_colors(len(names))):
        widths = np.array([p.exit_fractions[j] for _, p in rows])
        ax.barh(y, widths, left=left, color=color, edgecolor="white", height=0.75, label=names[j])
        for yi, x0, w in zip(y, left, widths):
            if w >= 0.07:
                ax.text(x0 + w / 2, yi, f"{w:.0%}", ha="center", va="center", fontsize=8, color=ink(color))
        left += widths
    for yi, (_, p) in zip(y, rows):
        ax.text(1.01, yi, f"{pct(p.accuracy)} acc · {short_pct(p.cost)} cost", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [label for label, _ in rows])
    for tick, (_, p) in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("bold" if same(p, selected) else "normal")
    ax.set(xlim=(0, 1), xlabel="fraction of test samples leaving at each exit")
    percent_axis(ax.xaxis, 1.0, 0)
    ax.spines[["top", "right"]].set_visible(False)
    thresholds = {p.threshold for p in leenet if p.threshold is not None}
    at = f" at gate threshold {param(thresholds.pop())}" if len(thresholds) == 1 else ""
    which = (f"all {len(leenet)} alphas" if step == 1 else
             f"{len(shown)} of {len(leenet)} alphas (every {_ordinal(step)}, the last and the selected)") + at
    if any(same(p, selected) for p in shown):
        which += "; the selected one in bold"
    elif selected and selected.method == "leenet":
        which += f"; the selected model ({setting(selected)}) is at another gate threshold"
    ax.set_title(f"LEENet, {which}", fontsize=10)
    fig.legend(loc="outside upper center", ncol=len(names), frameon=False, title="exit")
    return save(fig, path)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def plot_per_exit_accuracy(results: Results, path: Path) -> Path:
    """Dots: test accuracy of each exit's head (± std when present), with the exit's cost under its name.

    The accuracy axis spans the data, not 0–100 %, so close accuracies stay apart; dots, not bars,
    because a bar's length would read as the value from a baseline that is not zero. Returns ``path``.
    """
    exits, colors = results.exits, exit_colors(len(results.exits))
    acc = np.array([100 * e.accuracy for e in exits])
    std = np.array([100 * (e.accuracy_std or 0.0) for e in exits])
    backbone = 100 * results.backbone.accuracy
    low, high = min((acc - std).min(), backbone), max((acc + std).max(), backbone)
    pad = max(0.5, 0.12 * (high - low))
    fig = new_figure(figsize=(max(5.0, 1.3 * len(exits) + 2), 4.5))
    ax = fig.subplots()
    x = np.arange(len(exits))
    ax.axhline(backbone, ls="--", color="black", lw=1, zorder=0, label=f"backbone {backbone:.1f}%")
    if std.any():
        ax.errorbar(x, acc, yerr=std, fmt="none", ecolor="#626567", capsize=3, zorder=2)
    ax.scatter(x, acc, s=90, c=colors, edgecolor="black", lw=0.6, zorder=3)
    for xi, e in zip(x, exits):
        ax.annotate(pct(e.accuracy), (xi, 100 * e.accuracy), textcoords="offset points", xytext=(10, 0),
                    va="center", fontsize=9, bbox=LABEL_BOX, zorder=4)
    ax.set_xticks(x, [f"{e.name}\n{short_pct(e.cost)} FLOPs" for e in exits])
    ax.set(xlim=(-0.5, len(exits) - 0.5), ylim=(max(0.0, low - pad), min(100.0, high + pad) + 0.3 * pad),
           ylabel="test accuracy (axis does not start at 0)",
           title="accuracy of each exit (all samples leave there)")
    percent_axis(ax.yaxis, 100, 0 if high - low > 4 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="best", frameon=False, fontsize=8)
    return save(fig, path)
