"""Markdown tables from a benchmark's ``results.json`` (what the pages under docs/benchmarks/ quote).

``python benchmarks/tables.py benchmarks/results/fashion_mnist_sdn/results.json`` prints the
per-exit accuracies, the operating points of LEENet and both threshold baselines, the benchmark's
targets, budget mode and every gate method ("lever"), all as mean ± std over the seeds. The file is
read through the results schema (``leenet.report.read_results``); the benchmark's own records
(targets, levers, budget mode, machine) are its ``extra`` section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leenet.report import Results, read_results
from leenet.report.results import OperatingPoint

METHODS = ("leenet", "max_softmax", "entropy")


def pct(mean: float, std: float | None = None, digits: int = 2) -> str:
    """Accuracy fraction → percent, with ± std when there is one."""
    text = f"{100 * mean:.{digits}f}"
    return text + (f" ± {100 * std:.{digits}f}" if std else "")


def exits_table(r: Results) -> str:
    rows = ["| exit | cost | accuracy (%) |", "|---|---|---|"]
    rows += [f"| {e.name} | {e.cost:.3f} | {pct(e.accuracy, e.accuracy_std)} |" for e in r.exits]
    return "\n".join(rows)


def operating_points_table(r: Results) -> str:
    seeds = len(r.seeds)
    by_name: dict[str, dict[str, OperatingPoint]] = {}
    for p in r.operating_points:
        by_name.setdefault(p.name, {})[p.method] = p
    rows = ["| operating point (chosen on calibration, reported on test) | LEENet | max-softmax | entropy |",
            "|---|---|---|---|"]
    for name, per_method in by_name.items():
        cells = []
        for m in METHODS:
            p = per_method.get(m)
            if p is None or not p.reachable:
                cells.append("unreachable")
                continue
            held = f"held {p.met_on_test_seeds}/{seeds}"
            cells.append(f"{pct(p.accuracy, p.accuracy_std)} % at cost {p.cost:.3f} ({held})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ms(entry: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    text = f"{scale * entry['mean']:+.{digits}f}" if scale != 1.0 else f"{entry['mean']:.{digits}f}"
    return text + (f" ± {scale * entry['std']:.{digits}f}" if entry["std"] else "")


def targets_table(r: Results) -> str:
    t = r.extra["targets"]
    return "\n".join([
        "| measure (test split, mean ± std over seeds) | value |",
        "|---|---|",
        f"| (a) cost of the cheapest setting within 0.5 pt on calibration | {_ms(t['cost_at_0.5pt'])} |",
        f"| (a) its accuracy drop on test (pt) | {_ms(t['drop_at_0.5pt'], 100, 2)} |",
        f"| (b) area between envelopes, α-curve (pt × cost) | {_ms(t['area'], 100, 2)} |",
        f"| (b) worst gap, α-curve (pt) at cost | {_ms(t['worst_gap'], 100, 2)} at {_ms(t['worst_cost'])} |",
        f"| (b) area, whole α × threshold family (pt × cost) | {_ms(t['family_area'], 100, 2)} |",
        f"| (b) worst gap, whole family (pt) | {_ms(t['family_worst_gap'], 100, 2)} |",
        f"| (b) area, budgets solved every {r.extra['budget_step']:g} of cost (pt × cost) | "
        f"{_ms(t.get('budget_area'), 100, 2)} |",
        f"| (b) worst gap, solved budgets (pt) at cost | {_ms(t.get('budget_worst_gap'), 100, 2)} at "
        f"{_ms(t.get('budget_worst_cost'))} |",
        *_significance_rows(t),
        f"| (c) largest cost jump between neighbouring alphas | {_ms(t['max_jump'])} |",
        f"| (c) accuracy lost at alpha = 0 (pt) | {_ms(t['alpha0_drop'], 100, 2)} |",
    ])


def _significance_rows(t: dict) -> list[str]:
    """Paired standard errors of the (b) gaps: is the worst point a loss or test-set noise?"""
    rows = []
    for prefix, what in (("", "α-curve"), ("family_", "whole family"), ("budget_", "solved budgets")):
        if t.get(prefix + "min_z") is None:
            continue
        rows += [
            f"| (b) paired standard error of the worst gap, {what} (pt) | {_ms(t[prefix + 'worst_stderr'], 100, 2)} |",
            f"| (b) most significant loss, {what}: gap / standard error (gap in pt at cost) | "
            f"{_ms(t[prefix + 'min_z'], 1, 2)} ({_ms(t[prefix + 'min_z_gap'], 100, 2)} "
            f"at {_ms(t[prefix + 'min_z_cost'])}) |",
        ]
    return rows


def budgets_table(r: Results) -> str:
    rows = ["| budget | seed | alpha, threshold | calibration | test | held |", "|---|---|---|---|---|---|"]
    for name, per_seed in r.extra["budget_mode"].items():
        for seed, b in zip(r.seeds, per_seed):
            if not b["reachable"]:
                rows.append(f"| {name} | {seed} | unreachable | | | |")
                continue
            rows.append(f"| {name} | {seed} | {b['alpha']:g}, {b['threshold']:g} | "
                        f"{pct(b['calib']['accuracy'])} % at {b['calib']['cost']:.3f} | "
                        f"{pct(b['test']['accuracy'])} % at {b['test']['cost']:.3f} | "
                        f"{'yes' if b['met_on_test'] else '**no**'} |")
    return "\n".join(rows)


def _solved(m: dict) -> str:
    if m.get("budget_area") is None:
        return "n/a"
    return f"{_ms(m['budget_area'], 100, 2)}, {_ms(m['budget_worst_gap'], 100, 2)}"


def levers_table(r: Results) -> str:
    rows = ["| gate method | seeds | area α-curve | worst gap (pt) @ cost | area α × thr. | cost @ ≤ 0.5 pt "
            "| test drop there (pt) | max α-jump | α=0 loss (pt) | solved budgets: area, worst (pt) | s / sweep |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r.extra["levers"].items():
        chosen = " (reported as leenet)" if name == r.extra["gate_method"] else ""
        rows.append(
            f"| {name}{chosen} | {m['seeds']} | {_ms(m['area'], 100, 2)} | {_ms(m['worst_gap'], 100, 1)} @ "
            f"{m['worst_cost']['mean']:.2f} | {_ms(m['family_area'], 100, 2)} | {_ms(m['cost_at_0.5pt'])} | "
            f"{_ms(m['drop_at_0.5pt'], 100, 2)} | {_ms(m['max_jump'])} | {_ms(m['alpha0_drop'], 100, 2)} | "
            f"{_solved(m)} | {m['seconds_per_sweep']:.1f} |")
    return "\n".join(rows)


def curve_line(r: Results) -> str:
    curve = [p for p in r.policies if p.method == "leenet"]
    return "; ".join(f"α={p.param:g} {pct(p.accuracy)} % at {p.cost:.3f}" for p in curve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="results.json of benchmarks/fashion_mnist.py")
    args = parser.parse_args()
    for path in args.results:
        r = read_results(path)
        machine = r.extra["machine"]
        print(f"## {path}\n\nbackbone {r.backbone.name}: {pct(r.backbone.accuracy)} %; heads "
              f"{r.heads.kind}; seeds {list(r.seeds)}; reported gate method "
              f"{r.extra['gate_method']}; budgets keep {r.budget_margin:g} standard errors of slack; "
              f"{machine['command']} on {machine['date']}; timings "
              + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()) + "\n")
        for table in (exits_table, operating_points_table, targets_table, budgets_table, levers_table):
            print(table(r) + "\n")
        print("LEENet curve (threshold 0.5): " + curve_line(r) + "\n")


if __name__ == "__main__":
    main()
