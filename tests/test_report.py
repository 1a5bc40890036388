"""Tests for leenet.report: plots are real PNGs, the HTML has its sections and escapes, the summary has its rows."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest

from leenet import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIT_NAMES = ["block1", "block2", "block3", "final"]
EXIT_COSTS = [0.22, 0.48, 0.74, 1.004]
EXIT_ACCS = [0.712, 0.884, 0.951, 0.975]


def _curve_point(method: str, param: float | None, cost: float, with_std: bool) -> dict:
    """A plausible policy entry: accuracy saturates with cost, mass moves to later exits."""
    accuracy = 0.975 - 0.27 * math.exp(-7.5 * (cost - 0.22)) + (0.004 if method == "leenet" else 0.0)
    late = min(max((cost - 0.22) / 0.784, 0.0), 1.0)
    weights = [(1 - late) ** 2, 2 * late * (1 - late) * 0.6, 2 * late * (1 - late) * 0.4, late**2]
    point = {"method": method, "param": param, "accuracy": min(accuracy, 0.978), "cost": cost,
             "exit_fractions": [w / sum(weights) for w in weights]}
    if with_std:
        point.update(accuracy_std=0.003 + 0.002 * (1 - late), cost_std=0.01)
    return point


def make_results(*, optional: bool = True, with_std: bool = False, n_alphas: int = 11) -> dict:
    """A realistic fake ``results.json`` dict: 4 exits, an alpha sweep, two threshold sweeps, oracle."""
    alphas = [round(i / (n_alphas - 1), 3) for i in range(n_alphas)]
    policies = [_curve_point("leenet", a, 1.004 - 0.76 * a**0.7, with_std) for a in alphas]
    policies += [_curve_point("max_softmax", round(0.5 + 0.05 * i, 2), 0.22 + 0.0784 * i, False) for i in range(11)]
    policies += [_curve_point("entropy", round(0.05 * i, 2), 0.25 + 0.075 * i, False) for i in range(11)]
    policies += [{"method": "single_exit", "param": i, "accuracy": a, "cost": c,
                  "exit_fractions": [float(j == i) for j in range(4)]}
                 for i, (a, c) in enumerate(zip(EXIT_ACCS, EXIT_COSTS))]
    policies.append({"method": "oracle", "param": None, "accuracy": 0.991, "cost": 0.31,
                     "exit_fractions": [0.71, 0.17, 0.07, 0.05]})
    results = {
        "leenet_version": "0.1.0",
        "dataset": "digits",
        "backbone": {"name": "digits_cnn", "accuracy": 0.975, "flops": 1_234_567, "macs": 617_283},
        "exits": [{"name": n, "cost": c, "accuracy": a, "flops": int(c * 1_234_567)}
                  for n, c, a in zip(EXIT_NAMES, EXIT_COSTS, EXIT_ACCS)],
        "policies": policies,
        "timings": {"backbone": 12.3, "heads": 4.5, "gates": 1.2, "evaluate": 2.0},
    }
    if optional:
        policies += [_curve_point("leenet_budget", round(0.22 + 0.02 * i, 2), 0.22 + 0.02 * i - 0.005, False)
                     for i in range(40)]  # budgets solved directly ("predict" runs)
        selected = next(p for p in policies if p["method"] == "leenet" and p["param"] == alphas[3])
        results.update(
            dataset_info={"num_classes": 10, "image_shape": [1, 8, 8], "num_train": 1150, "num_calib": 287,
                          "num_test": 360},
            flops_convention="flops = 2 x multiply-adds",
            selected={**selected, "reason": f"alpha={alphas[3]} (from --alpha)"},
            budget={"kind": "max_drop", "target": 0.005, "alpha": 0.35, "threshold": 0.5,
                    "calib": {"accuracy": 0.972, "cost": 0.52}, "test": {"accuracy": 0.971, "cost": 0.53},
                    "met_on_test": True, "reachable": True, "message": "alpha=0.35: budget held on test"},
            operating_points=[{"name": "accuracy at <= 50% FLOPs", "method": "leenet", "param": 0.4,
                               "accuracy": 0.9655, "cost": 0.47, "met_on_test": True},
                              {"name": "accuracy at <= 25% FLOPs", "method": "leenet", "reachable": False}],
            budget_margin=1.5,
            versus_thresholds={"leenet": {"area": -0.0014, "worst_gap": -0.0306, "worst_cost": 0.29, "max_jump": 0.379},
                               "leenet_budget": {"area": 0.0006, "worst_gap": -0.0032, "worst_cost": 0.312,
                                                 "max_jump": 0.013}},
            wall_clock={"device": "cpu", "throughput_batch": 256, "backbone_throughput": 12345.0,
                        "leenet_throughput": 20000.0, "backbone_latency_ms": 1.2, "leenet_latency_ms": 0.9,
                        "flops_speedup": 1.8, "measured_speedup": 1.62},
            config={"model": {"backbone": "digits_cnn", "exits": ["block1", "block2"]}, "seed": 0},
        )
    return results


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000


@pytest.mark.parametrize("optional", [True, False])
@pytest.mark.parametrize("with_std", [True, False])
@pytest.mark.parametrize("plot", [report.plot_tradeoff, report.plot_exit_fractions, report.plot_per_exit_accuracy])
def test_plots_write_png(tmp_path, plot, optional, with_std):
    out = plot(make_results(optional=optional, with_std=with_std), tmp_path / "sub" / "plot.png")
    assert out == tmp_path / "sub" / "plot.png"
    assert_png(out)


def test_tradeoff_without_zoom_when_all_points_are_close(tmp_path):
    results = make_results()
    for entry in results["policies"] + results["exits"]:
        entry["accuracy"] = 0.95 + 0.02 * entry["accuracy"]
    assert report._zoom_window(results) is None
    assert report._zoom_window(make_results()) is not None
    assert_png(report.plot_tradeoff(results, tmp_path / "t.png"))


def test_leenet_main_curve_uses_default_gate_threshold():
    results = make_results()
    extra = [{**p, "threshold": 0.7, "accuracy": 0.5} for p in results["policies"] if p["method"] == "leenet"]
    for p in results["policies"]:
        if p["method"] == "leenet":
            p["threshold"] = 0.5
    results["policies"] += extra
    main = report._policies(results, "leenet")
    assert len(main) == 11 and all(p["threshold"] == 0.5 for p in main)


def test_write_report_full(tmp_path):
    path = report.write_report(make_results(with_std=True), tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    for name in ("tradeoff.png", "exit_fractions.png", "per_exit_accuracy.png"):
        assert_png(tmp_path / "out" / name)
    page = path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    for text in ("digits_cnn", "97.50%", "1.23 MFLOPs", "Operating points", "accuracy at &lt;= 50% FLOPs",
                 "unreachable", "Exits", "block3", "Policies", "<details>", "Wall clock", "1.62×",
                 "Timings", "<th>seconds</th>", "12.30", "20.00", "Config", "<td>seed</td>", "met on test", "± ",
                 "1.5 standard errors of slack", "LEENet against thresholds", "budgets solved directly",
                 "-3.06 pt at 29%", "+0.06", "0.379"):
        assert text in page, text
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # image bytes may spell anything
    assert "<script" not in text and "http" not in text  # self-contained: nothing fetched, nothing run


def test_write_report_minimal_omits_optional_sections(tmp_path):
    page = report.write_report(make_results(optional=False), tmp_path).read_text(encoding="utf-8")
    for text in ("Operating points", "Wall clock", "Config", "selected accuracy", "budget"):
        assert text not in page, text
    assert "Timings" in page and "Policies" in page


def test_write_report_budget_unreachable_and_routed_check(tmp_path):
    results = make_results()
    results["budget"] = {"kind": "target_cost", "target": 0.1, "reachable": False, "message": "unreachable: relax it"}
    results["routed_check"] = {"accuracy": 0.97, "cost": 0.6, "matches_simulation": False}
    page = report.write_report(results, tmp_path).read_text(encoding="utf-8")
    for text in ("mean cost ≤ 10% FLOPs", "unreachable: relax it", "routed forward", "MISMATCH"):
        assert text in page, text


def test_write_report_without_leenet_policies(tmp_path):
    results = make_results(optional=False)
    results["policies"] = [p for p in results["policies"] if p["method"] != "leenet"]
    page = report.write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "Where samples leave" not in page
    assert not (tmp_path / "exit_fractions.png").exists()


def test_write_report_escapes_strings(tmp_path):
    results = make_results()
    results["dataset"] = "<script>alert(1)</script>"
    results["exits"][0]["name"] = "<b>x</b>"
    results["config"]["note"] = "</pre><script>bad()</script>"
    page = report.write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "<script" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_summary_table_rows():
    table, _, notes = report.summary_table(make_results()).partition("\n\n")
    lines = table.splitlines()
    assert "8 of 11 alphas" in notes and "* the saved model (α=0.3" in notes and "picked on test" in notes
    assert lines[0].split() == ["method", "param", "accuracy", "cost"]
    assert len({len(line) for line in lines}) == 1  # fixed width: the cost column is right-aligned
    assert lines[2].startswith("backbone") and "97.50%" in lines[2] and "1.000" in lines[2]
    for name in EXIT_NAMES:
        assert any(line.startswith("single exit") and name in line for line in lines)
    assert sum(line.startswith("leenet") for line in lines) == report.MAX_ROWS  # 11 alphas, subsampled
    assert any("alpha=0.3 *" in line for line in lines)
    assert sum(line.startswith("max_softmax") for line in lines) == 1
    assert sum(line.startswith("entropy") for line in lines) == 1
    assert lines[-1].startswith("oracle") and "99.10%" in lines[-1]


def test_summary_table_baseline_is_best_at_selected_cost():
    results = make_results()
    line = next(line for line in report.summary_table(results).splitlines() if line.startswith("max_softmax"))
    budget = results["selected"]["cost"] + 0.01
    best = max((p for p in results["policies"] if p["method"] == "max_softmax" and p["cost"] <= budget),
               key=lambda p: p["accuracy"])
    assert f"t={best['param']:.4g}" in line


def test_summary_table_subsamples_alphas_keeping_selected():
    results = make_results(n_alphas=21)
    leenet = [p for p in results["policies"] if p["method"] == "leenet"]
    results["selected"] = {**leenet[7], "reason": "budget"}
    lines = [line for line in report.summary_table(results).splitlines() if line.startswith("leenet")]
    assert len(lines) <= report.MAX_ROWS + 1
    assert any(f"alpha={leenet[7]['param']:.4g} *" in line for line in lines)


def test_summary_table_shows_std_and_selected_off_curve():
    results = make_results(with_std=True)
    results["selected"] = {"method": "max_softmax", "param": 0.8, "accuracy": 0.96, "cost": 0.5}
    table = report.summary_table(results)
    assert "±" in table
    assert any(line.startswith("max_softmax *") for line in table.splitlines())


def test_summary_table_without_selected_uses_mid_curve_cost():
    results = make_results(optional=False)
    leenet = sorted((p for p in results["policies"] if p["method"] == "leenet"), key=lambda p: p["cost"])
    line = next(line for line in report.summary_table(results).splitlines() if line.startswith("entropy"))
    best = max((p for p in results["policies"] if p["method"] == "entropy" and p["cost"] <= leenet[5]["cost"] + 0.01),
               key=lambda p: p["accuracy"])
    assert f"t={best['param']:.4g}" in line and "*" not in report.summary_table(results)


def test_inputs_are_not_mutated(tmp_path):
    results = make_results(with_std=True)
    before = copy.deepcopy(results)
    report.write_report(results, tmp_path)
    report.summary_table(results)
    assert results == before


def test_tradeoff_draws_the_solved_budget_curve_under_the_alpha_curve():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    results = make_results()
    report._draw_tradeoff(ax, results)
    labels = ax.get_legend_handles_labels()[1]
    assert "LEENet, budgets solved directly" in labels and "LEENet (learned gates)" in labels
    line = next(h for h, label in zip(*ax.get_legend_handles_labels()) if label == "LEENet, budgets solved directly")
    assert len(line.get_xdata()) == 40 and list(line.get_xdata()) == sorted(line.get_xdata())
    assert "leenet_budget" not in report.summary_table(results)  # the terminal table keeps to the alpha sweep


def test_report_says_when_routing_is_slower_than_the_backbone(tmp_path):
    results = make_results()
    assert "slower than the backbone" not in report.write_report(results, tmp_path / "fast").read_text()
    results["wall_clock"].update(device="cuda:0", measured_speedup=0.25)
    html = report.write_report(results, tmp_path / "slow").read_text()
    assert "0.25×" in html and "slower than the backbone" in html


def _figure_of(monkeypatch, plot, results: dict, tmp_path: Path):
    """The Figure ``plot`` draws, captured where it is saved."""
    figures = []
    save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plot(results, tmp_path / "plot.png")
    return figures[0]


def _operating_point(name: str, kind: str, target: float, method: str, param: float, threshold: float | None,
                     cost: float, met: bool = True) -> dict:
    point = {"name": name, "kind": kind, "target": target, "method": method, "reachable": True, "param": param,
             "accuracy": 0.9833, "cost": cost, "met_on_test": met}
    return point if threshold is None else {**point, "threshold": threshold}


def test_operating_points_show_the_gate_threshold_and_share_rows(tmp_path):
    results = make_results()
    points = [_operating_point(f"accuracy at <= {b:.0%} FLOPs", "max_cost", b, "leenet", 0.85, 0.4, 0.076)
              for b in (0.25, 0.5, 0.75, 1.0)]
    points += [_operating_point("cost at <= 0.5 pt drop", "max_drop", 0.005, "leenet", 0.85, 0.4, 0.076),
               _operating_point("cost at <= 1 pt drop", "max_drop", 0.01, "leenet", 0.9, 0.45, 0.059)]
    points += [_operating_point(f"accuracy at <= {b:.0%} FLOPs", "max_cost", b, "entropy", 0.63, None, 0.19)
               for b in (0.25, 0.5)]
    points += [_operating_point("cost at <= 0.5 pt drop", "max_drop", 0.005, "entropy", 0.63, None, 0.19, met=False),
               {"name": "accuracy at <= 25% FLOPs", "kind": "max_cost", "target": 0.25, "method": "max_softmax",
                "reachable": False}]
    results["operating_points"] = points
    html = report._operating_points(results)
    rows = html.split("<tbody>")[1].count("<tr>")
    assert rows == 5  # 6 LEENet points in 2 rows; entropy's miss on test keeps its own row; one unreachable
    assert "accuracy at ≤ 25%, 50%, 75%, 100% FLOPs; cost at ≤ 0.5 pt drop" in html
    assert "α=0.85, t=0.4" in html and "α=0.9, t=0.45" in html and "<td>t=0.63</td>" in html
    assert "<td>NO</td>" in html and "unreachable on calibration" in html
    results["selected"] = {**points[0], "threshold": 0.4}
    assert "α=0.85, t=0.4 (the selected setting)" in report._operating_points(results)


def test_cards_name_the_selected_setting_with_why_it_was_chosen(tmp_path):
    results = make_results()
    results["selected"]["threshold"] = 0.5
    cards = report._key_numbers(results)
    card = cards.split("<div class='card")[2]  # [1] opens the row of cards
    assert "selected model" in card and "α=0.3, t=0.5" in card and "(from --alpha)" in card
    flops = next(c for c in cards.split("<div class='card") if "FLOPs speed-up" in c)
    assert "from --alpha" not in flops


def test_slower_flag_names_throughput_or_latency_and_fits_the_device(tmp_path):
    clock = {"device": "cpu", "throughput_batch": 256, "measured_speedup": 1.81, "latency_speedup": 0.70,
             "flops_speedup": 3.0}
    flag = report.slower_flag(clock)
    assert "latency at batch 1 (0.70x)" in flag and "throughput" not in flag and "GPU" not in flag
    assert "slower than the backbone" in report.speed_line(clock)
    gpu = report.slower_flag({**clock, "device": "cuda:0", "measured_speedup": 0.5})
    assert "throughput at batch 256 (0.50x) and latency at batch 1" in gpu and "kernel launches" in gpu
    assert report.slower_flag({**clock, "latency_speedup": 1.2}) == ""
    assert "slower" not in report.speed_line({**clock, "latency_speedup": 1.2})
    results = make_results()
    results["wall_clock"].update(latency_speedup=0.7)
    page = report.write_report(results, tmp_path).read_text()
    assert "slower than the backbone in latency at batch 1" in page and "card warn" in page


def test_wall_clock_table_has_readable_labels_and_units(tmp_path):
    results = make_results()
    results["wall_clock"].update(latency_samples=64, latency_speedup=1.33)
    html = report._wall_clock(results)
    for text in ("LEENet throughput", "20,000 images/s", "backbone latency at batch 1", "0.9 ms per image",
                 "64 images, one at a time", "1.62×", "1.33×"):
        assert text in html, text
    assert "latency samples" not in html and "leenet latency ms" not in html


def test_config_shows_resolved_values_for_unset_settings():
    results = make_results()
    results["config"] = {"data": {"dataset": "digits", "image_size": None},
                         "model": {"arch": None, "exits": None, "head": None, "gate": None, "weights": None},
                         "train": {"epochs": None, "gates": None, "head_lr": 0.002}, "alpha": None, "seed": 0}
    results["gates"] = {"training": {"objective": "hard", "steps": 300}, "inputs": {"hidden": 16}}
    results["backbone"]["training"] = {"epochs": 40, "lr": 0.05, "precision": "fp32", "transfer": False}
    results["heads"] = {"kind": "flatten", "epochs": 30, "lr": 0.002}  # recorded by leenet run
    html = report._config(results)
    for text in ("digits_cnn (dataset default)", "block1, block2, block3 (the backbone&#x27;s default exits)",
                 "objective=hard, steps=300 (dataset default)", "hidden=16 (dataset default)",
                 "8 (the dataset&#x27;s)", "α=0.3", "<td>0.002</td>"):
        assert text in html, text
    assert "<td>none</td>" not in html.split("model.weights")[1][:40]
    assert "flatten (dataset default)" in html and "40 (dataset default)" in html
    del results["heads"], results["backbone"]["training"]  # a run older than those records: nothing guessed
    html = report._config(results)
    assert "flatten" not in html and "<td>train.epochs</td><td>none</td>" in html


def test_policies_table_names_single_exits(tmp_path):
    html = report._policies_section(make_results())
    assert "<td>single_exit</td><td>block2</td>" in html and "<td>single_exit</td><td>1</td>" not in html


def test_exit_fractions_shows_every_alpha_or_says_which(monkeypatch, tmp_path):
    results = make_results(n_alphas=21)
    fig = _figure_of(monkeypatch, report.plot_exit_fractions, results, tmp_path)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 22 and "all 21 alphas" in ax.get_title()  # and the oracle
    results = make_results(n_alphas=41)
    leenet = [p for p in results["policies"] if p["method"] == "leenet"]
    results["selected"] = {**leenet[7], "reason": "budget"}
    ax = _figure_of(monkeypatch, report.plot_exit_fractions, results, tmp_path).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "22 of 41 alphas (every 2nd, the last and the selected)" in ax.get_title(), ax.get_title()
    assert f"α = {leenet[7]['param']:.4g}" in labels and len(labels) == 23  # 21 every 2nd, the selected, oracle


def test_per_exit_accuracy_zooms_on_the_data_with_dots_and_keeps_labels_inside(monkeypatch, tmp_path):
    results = make_results()
    fig = _figure_of(monkeypatch, report.plot_per_exit_accuracy, results, tmp_path)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 60 < low < 100 * min(EXIT_ACCS) and high > 100 * results["backbone"]["accuracy"]
    assert not ax.patches  # dots, not bars from a baseline that is not zero
    assert "backbone 97.5%" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig.draw_without_rendering()
    for artist in [*ax.texts, ax.get_legend()]:  # nothing clipped at the figure's edges
        box = artist.get_window_extent()
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1


def test_tradeoff_exit_labels_do_not_cover_alpha_labels(monkeypatch, tmp_path):
    results = make_results()
    fig = _figure_of(monkeypatch, report.plot_tradeoff, results, tmp_path)
    for ax in fig.axes:
        exits = [t for t in ax.texts if t.get_text() in EXIT_NAMES]
        alphas = [t for t in ax.texts if t.get_text().startswith("α=")]
        assert exits and alphas
        for e in exits:
            assert not any(e.get_window_extent().overlaps(a.get_window_extent()) for a in alphas), e.get_text()


def test_operating_points_of_a_multi_seed_benchmark_count_seeds():
    """The benchmark averages seeds: 'held' counts them (a miss in one seed shows), and the setting is seed 0's."""
    results = make_results()
    results["seeds"] = [0, 1, 2]
    point = {"method": "leenet", "param": 0.4, "threshold": 0.5, "accuracy": 0.9655, "cost": 0.47, "met_on_test": True}
    results["operating_points"] = [  # same setting, but one budget missed in a seed: rows stay apart
        {**point, "name": "accuracy at <= 50% FLOPs", "kind": "max_cost", "target": 0.5, "met_on_test_seeds": 3},
        {**point, "name": "cost at <= 0.5 pt drop", "kind": "max_drop", "target": 0.005, "met_on_test_seeds": 2}]
    html = report._operating_points(results)
    assert "2 / 3 seeds (NOT all)" in html and "3 / 3 seeds" in html and "seed 0: α=0.4, t=0.5" in html
    assert "each seed chooses its own setting" in html

