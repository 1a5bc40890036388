"""The terminal's view of a run: a fixed-width summary table and the wall-clock speed line."""

from __future__ import annotations

from typing import Any, Mapping

from leenet.report.common import (
    as_results,
    as_wall_clock,
    param,
    pct,
    policies,
    same,
    setting,
    slower_flag,
    subsample,
)
from leenet.report.results import Results, WallClock

MAX_ROWS = 8  # LEENet alphas listed in the terminal summary
Row = tuple[str, str, str, str]


def _row(method: str, label: str, accuracy: float, std: float | None, cost: float) -> Row:
    return method, label, pct(accuracy, std, 2), f"{cost:.3f}"


def _summary_rows(results: Results) -> list[Row]:
    selected, leenet, bb = results.selected, policies(results, "leenet"), results.backbone
    rows = [_row("backbone", bb.name, bb.accuracy, bb.accuracy_std, 1.0)]
    rows += [_row("single exit", e.name, e.accuracy, e.accuracy_std, e.cost) for e in results.exits]
    for p in sorted(subsample(leenet, MAX_ROWS, selected), key=lambda p: p.param):
        label = f"alpha={param(p.param)}" + (" *" if same(p, selected) else "")
        rows.append(_row("leenet", label, p.accuracy, p.accuracy_std, p.cost))
    if selected and not any(same(p, selected) for p in leenet):
        rows.append(_row(f"{selected.method} *", param(selected.param), selected.accuracy, selected.accuracy_std,
                         selected.cost))
    ref = selected.cost if selected else (leenet[len(leenet) // 2].cost if leenet else 1.0)
    for method in ("max_softmax", "entropy"):  # most accurate at about the reference cost, else cheapest
        points = policies(results, method)
        if fits := [p for p in points if p.cost <= ref + 0.01] or points[:1]:
            best = max(fits, key=lambda p: p.accuracy)
            rows.append(_row(method, f"t={param(best.param)}", best.accuracy, best.accuracy_std, best.cost))
    return rows + [_row("oracle", "-", p.accuracy, p.accuracy_std, p.cost) for p in policies(results, "oracle")]


def speed_line(clock: WallClock | Mapping[str, Any]) -> str:
    """The run's wall-clock measurement (``Results.wall_clock``) in one terminal line."""
    clock = as_wall_clock(clock)
    line = (f"measured on {clock.device}: {clock.measured_speedup:.2f}x the backbone's throughput at batch "
            f"{clock.throughput_batch}, {clock.latency_speedup:.2f}x its speed at batch 1 "
            f"(FLOPs say {clock.flops_speedup:.2f}x)")
    return line + (f"; {flag}" if (flag := slower_flag(clock)) else "")


def summary_table(results: Results | Mapping[str, Any]) -> str:
    """A fixed-width text table for the terminal: backbone, exits, LEENet alphas, baselines, oracle.

    More than ``MAX_ROWS`` alphas are subsampled (the selected one always stays, marked ``*``);
    each threshold baseline shows its most accurate point at about the selected cost.

    Args:
        results: a run's results (a plain results dict is read as the schema first).

    Returns:
        The table (method, param, accuracy, cost), a blank line and notes on what its rows are,
        without a trailing newline.
    """
    results = as_results(results)
    header = ("method", "param", "accuracy", "cost")
    rows = _summary_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    table = "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])
    return table + "\n\n" + "\n".join(_summary_notes(results, shown=sum(r[0] == "leenet" for r in rows)))


def _summary_notes(results: Results, shown: int) -> list[str]:
    """What the summary's rows are: which alphas (``shown`` of them), which thresholds, what the star marks."""
    selected, leenet = results.selected, policies(results, "leenet")
    at = f" at gate threshold {param(leenet[0].threshold)}" if leenet and leenet[0].threshold is not None else ""
    notes = [f"test split; cost = mean share of the backbone's FLOPs; leenet: {shown} of {len(leenet)} alphas" + at]
    notes.append("max_softmax, entropy: each baseline's most accurate threshold at about the "
                 + ("saved model's" if selected else "middle alpha's") + " cost (picked on test, which flatters them)")
    if selected:
        notes.append(f"* the saved model ({setting(selected)}): {selected.reason or 'chosen by the run'}")
    return notes
