"""Plots, a terminal summary and a self-contained HTML report from a run's ``results.json`` dict.

Accuracies in ``results`` are fractions and costs are mean FLOPs relative to the plain
backbone; both are shown as percentages. Plots use ``matplotlib.figure.Figure`` directly
(no pyplot state), so this module is safe to call from threads and tests.
"""

from __future__ import annotations

import base64
import html
import json
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


def _curve(ax: Axes, points: list[dict], label: str, color: str, markers: bool, dashed: bool = False) -> None:
    """One accuracy-vs-cost line, with a ±std band and (with markers) error bars when present."""
    x = np.array([p["cost"] for p in points])
    y = np.array([100 * p["accuracy"] for p in points])
    sy = np.array([100 * p.get("accuracy_std", 0.0) for p in points])
    sx = np.array([p.get("cost_std", 0.0) for p in points])
    ax.plot(x, y, color=color, lw=2.2 if markers else 1.6, marker="o" if markers else None, ms=5, label=label,
            ls="--" if dashed else "-", zorder=4 if markers else 3)
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
    for method in ("max_softmax", "entropy", "leenet_budget", "leenet"):
        if points := _policies(results, method):
            _curve(ax, points, *CURVES[method], markers=method == "leenet", dashed=method == "leenet_budget")
    acc = 100 * results["backbone"]["accuracy"]
    for e in results["exits"]:
        ax.scatter(e["cost"], 100 * e["accuracy"], marker="s", s=40, color="#626567", zorder=5, label="single exit")
        if abs(e["cost"] - 1) < 0.02 and abs(100 * e["accuracy"] - acc) < 0.1:
            continue  # the final exit sits on the backbone's marker
        right = e["cost"] < 0.9  # labels near the right edge go left of their point
        ax.annotate(e["name"], (e["cost"], 100 * e["accuracy"]), textcoords="offset points",
                    xytext=(5 if right else -5, -12), ha="left" if right else "right", fontsize=8, color="#424949")
    for p in _policies(results, "oracle"):
        ax.scatter(p["cost"], 100 * p["accuracy"], marker="*", s=220, color="#f4d03f", edgecolor="black", lw=0.8,
                   zorder=6, label="oracle (bound)")
    ax.axhline(acc, ls="--", lw=1, color="black", alpha=0.7, zorder=1)
    ax.axhline(acc - 0.5, ls=":", lw=1, color="gray", zorder=1, label="backbone − 0.5 pt")
    ax.scatter(1.0, acc, marker="D", s=50, color="black", zorder=6, label="backbone")
    if sel := results.get("selected"):
        name = "α=" if sel.get("method") == "leenet" else f"{sel.get('method')} "
        ax.scatter(sel["cost"], 100 * sel["accuracy"], s=260, facecolor="none", edgecolor="#7d3c98", lw=2,
                   zorder=7, label=f"selected ({name}{_param(sel.get('param'))})")
    max_cost = max([1.0] + [p["cost"] for p in results["policies"]] + [e["cost"] for e in results["exits"]])
    ax.set_xlim(0, max(1.05, max_cost + 0.03))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set(xlabel="mean cost (% of backbone FLOPs)", ylabel="test accuracy")
    ax.grid(alpha=0.3)


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
        _annotate_alphas(ax, _policies(results, "leenet"), results.get("selected"))
    unique = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # one entry per label
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=5 if window else 3, frameon=False)
    fig.suptitle(f"{results['dataset']} · {results['backbone']['name']}: accuracy vs compute", fontweight="bold")
    return _save(fig, path)


def plot_exit_fractions(results: dict, path: Path) -> Path:
    """Stacked bars: the fraction of test samples leaving at each exit, for LEENet at several alphas.

    Args:
        results: a run's ``results.json`` dict.
        path: PNG file to write (returned).
    """
    names, selected = [e["name"] for e in results["exits"]], results.get("selected")
    rows = [(f"α = {_param(p['param'])}", p)
            for p in sorted(_subsample(_policies(results, "leenet"), 12, selected), key=lambda p: p["param"])]
    rows += [("oracle", p) for p in _policies(results, "oracle")[:1]]
    fig = Figure(figsize=(9, 1.4 + 0.42 * max(len(rows), 2)), layout="constrained")
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
    fig.legend(loc="outside upper center", ncol=len(names), frameon=False, title="exit")
    return _save(fig, path)


def plot_per_exit_accuracy(results: dict, path: Path) -> Path:
    """Bars: test accuracy of each exit's head, with the exit's cost under its name.

    Args:
        results: a run's ``results.json`` dict.
        path: PNG file to write (returned).
    """
    exits, colors = results["exits"], _exit_colors(len(results["exits"]))
    fig = Figure(figsize=(max(5.0, 1.3 * len(exits) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(exits)), [100 * e["accuracy"] for e in exits], color=colors, width=0.65)
    for bar, e, color in zip(bars, exits, colors):  # inside the bar top, clear of the backbone line
        inside = e["accuracy"] > 0.12
        ax.text(bar.get_x() + bar.get_width() / 2, 100 * e["accuracy"] + (-2.5 if inside else 1.5), _pct(e["accuracy"]),
                ha="center", va="top" if inside else "bottom", fontsize=9, color=_ink(color) if inside else "black")
    backbone = 100 * results["backbone"]["accuracy"]
    ax.axhline(backbone, ls="--", color="black", lw=1, zorder=0)
    ax.text(1.01, backbone, f"backbone\n{backbone:.1f}%", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_xticks(range(len(exits)), [f"{e['name']}\n{_short_pct(e['cost'])} FLOPs" for e in exits])
    ax.set(ylim=(0, 108), yticks=range(0, 101, 20), ylabel="test accuracy",
           title="accuracy of each exit (all samples leave there)")
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.spines[["top", "right"]].set_visible(False)
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


SLOWER_THAN_BACKBONE = ("slower than the backbone: per-exit kernel launches and syncs cost more than the FLOPs "
                        "saved (small networks on a GPU), see the README's wall-clock notes")


def speed_line(clock: dict) -> str:
    """The run's wall-clock measurement (``results["wall_clock"]``) in one terminal line."""
    line = (f"measured on {clock['device']}: {clock['measured_speedup']:.2f}x the backbone's throughput at batch "
            f"{clock['throughput_batch']}, {clock['latency_speedup']:.2f}x its speed at batch 1 "
            f"(FLOPs say {clock['flops_speedup']:.2f}x)")
    return line + (f"; {SLOWER_THAN_BACKBONE}" if clock["measured_speedup"] < 1 else "")


def summary_table(results: dict) -> str:
    """A fixed-width text table for the terminal: backbone, exits, LEENet alphas, baselines, oracle.

    More than ``MAX_ROWS`` alphas are subsampled (the selected one always stays, marked ``*``);
    each threshold baseline shows its most accurate point at about the selected cost.

    Args:
        results: a run's ``results.json`` dict.

    Returns:
        The table (method, param, accuracy, cost), without a trailing newline.
    """
    header = ("method", "param", "accuracy", "cost")
    rows = _summary_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


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


def _key_numbers(results: dict) -> str:
    """Cards (label, value, note) for each key number present in ``results``."""
    cards = []
    if sel := results.get("selected"):
        drop = 100 * (sel["accuracy"] - results["backbone"]["accuracy"])
        accuracy = _pct(sel["accuracy"], sel.get("accuracy_std"), 2)
        cards += [("selected accuracy", accuracy, f"{drop:+.2f} pt vs backbone"),
                  ("mean cost", f"{sel['cost']:.1%}", "of backbone FLOPs"),
                  ("FLOPs speed-up", f"{1 / max(sel['cost'], 1e-9):.2f}×", sel.get("reason", ""))]
    wall = results.get("wall_clock") or {}
    if wall.get("measured_speedup") is not None:
        latency = f"; latency {wall['latency_speedup']:.2f}×" if wall.get("latency_speedup") is not None else ""
        slower = f"; {SLOWER_THAN_BACKBONE}" if wall["measured_speedup"] < 1 else ""
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
    html_cards = "".join(f"<div class='card'><div class='label'>{_e(a)}</div><div class='value'>{_e(b)}</div>"
                         f"<div class='sub'>{_e(c)}</div></div>" for a, b, c in cards)
    return f"<div class='cards'>{html_cards}</div>" if html_cards else ""


def _operating_points(results: dict) -> str:
    if not (points := results.get("operating_points")):
        return ""
    rows = [[p.get("name", ""), p.get("method", ""), _param(p.get("param")), _pct(p.get("accuracy"), digits=2),
             _pct(p.get("cost")), {True: "yes", False: "no"}.get(p.get("met_on_test"), "unreachable")]
            for p in points]
    slack = results.get("budget_margin")
    slack = "" if slack is None else f" (each keeping {slack:g} standard errors of slack)"
    return f"<h2>Operating points</h2><p class='note'>chosen on calibration{slack}, reported on test</p>" + _table(
        ["operating point", "method", "param", "accuracy", "cost", "held on test"], rows)


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


def _policies_section(results: dict) -> str:
    names = [e["name"] for e in results["exits"]]
    gated = any("threshold" in p for p in results["policies"])  # LEENet's gate decision threshold
    rows = [[p["method"], _param(p.get("param")), *([_param(p.get("threshold"))] if gated else []),
             _pct(p["accuracy"], p.get("accuracy_std"), 2), _pct(p["cost"], p.get("cost_std")),
             *(_pct(f, digits=0) for f in p.get("exit_fractions") or [None] * len(names))]
            for p in results["policies"]]
    headers = ["method", "param", *(["gate threshold"] if gated else []), "accuracy", "cost", *names]
    return (f"<h2>Policies</h2><details><summary>all {len(rows)} evaluated policies (test split; exit columns: "
            f"fraction of samples leaving there)</summary>{_table(headers, rows)}</details>")


def _key_value(title: str, mapping: dict | None, headers: list[str], fmt: Any = _param, total: bool = False) -> str:
    if not mapping:
        return ""
    rows = [[k.replace("_", " "), fmt(v)] for k, v in mapping.items()]
    if total:
        rows.append(["total", fmt(sum(v for v in mapping.values() if isinstance(v, (int, float))))])
    return f"<h2>{_e(title)}</h2>" + _table(headers, rows)


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
                 _key_value("Wall clock", results.get("wall_clock"), ["measure", "value"]),
                 _key_value("Timings", results.get("timings"), ["phase", "seconds"], lambda v: f"{v:.2f}", total=True)]
    if "config" in results:
        config = _e(json.dumps(results["config"], indent=2, sort_keys=True, default=str))
        sections.append(f"<h2>Config</h2><details><summary>run configuration</summary><pre>{config}</pre></details>")
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
