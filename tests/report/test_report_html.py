"""leenet.report's plots and HTML page: real PNGs, every section when its data is there, escaped strings."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from report_fixtures import EXIT_ACCS, EXIT_NAMES, assert_png, make, make_results

from leenet.report import Results, plots, slower_flag, speed_line, summary_table, write_report
from leenet.report.common import policies
from leenet.report.html import _config, _key_numbers, _operating_points, _policies_section, _wall_clock

R = Results.from_dict


@pytest.mark.parametrize("optional", [True, False])
@pytest.mark.parametrize("with_std", [True, False])
@pytest.mark.parametrize("plot", [plots.plot_tradeoff, plots.plot_exit_fractions, plots.plot_per_exit_accuracy])
def test_plots_write_png(tmp_path, plot, optional, with_std):
    out = plot(make(optional=optional, with_std=with_std), tmp_path / "sub" / "plot.png")
    assert out == tmp_path / "sub" / "plot.png"
    assert_png(out)


def test_tradeoff_without_zoom_when_all_points_are_close(tmp_path):
    results = make_results()
    for entry in results["policies"] + results["exits"]:
        entry["accuracy"] = 0.95 + 0.02 * entry["accuracy"]
    assert plots.zoom_window(R(results)) is None
    assert plots.zoom_window(make()) is not None
    assert_png(plots.plot_tradeoff(R(results), tmp_path / "t.png"))


def test_leenet_main_curve_uses_default_gate_threshold():
    results = make_results()
    extra = [{**p, "threshold": 0.7, "accuracy": 0.5} for p in results["policies"] if p["method"] == "leenet"]
    for p in results["policies"]:
        if p["method"] == "leenet":
            p["threshold"] = 0.5
    results["policies"] += extra
    main = policies(R(results), "leenet")
    assert len(main) == 11 and all(p.threshold == 0.5 for p in main)


def test_write_report_full(tmp_path):
    path = write_report(make_results(with_std=True), tmp_path / "out")
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
    page = write_report(make_results(optional=False), tmp_path).read_text(encoding="utf-8")
    for text in ("Operating points", "Wall clock", "Config", "selected accuracy", "budget"):
        assert text not in page, text
    assert "Timings" in page and "Policies" in page


def test_write_report_budget_unreachable_and_routed_check(tmp_path):
    results = make_results()
    results["budget"] = {"kind": "target_cost", "target": 0.1, "reachable": False, "message": "unreachable: relax it"}
    results["routed_check"] = {"accuracy": 0.97, "cost": 0.6, "matches_simulation": False}
    page = write_report(results, tmp_path).read_text(encoding="utf-8")
    for text in ("mean cost ≤ 10% FLOPs", "unreachable: relax it", "routed forward", "MISMATCH"):
        assert text in page, text


def test_write_report_without_leenet_policies(tmp_path):
    results = make_results(optional=False)
    results["policies"] = [p for p in results["policies"] if p["method"] != "leenet"]
    page = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "Where samples leave" not in page
    assert not (tmp_path / "exit_fractions.png").exists()


def test_write_report_escapes_strings(tmp_path):
    results = make_results()
    results["dataset"] = "<script>alert(1)</script>"
    results["exits"][0]["name"] = "<b>x</b>"
    results["config"]["note"] = "</pre><script>bad()</script>"
    page = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "<script" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_inputs_are_not_mutated(tmp_path):
    results = make_results(with_std=True)
    before = copy.deepcopy(results)
    write_report(results, tmp_path)
    summary_table(R(results))
    assert results == before


def test_tradeoff_draws_the_solved_budget_curve_under_the_alpha_curve():
    ax = Figure().subplots()
    results = make_results()
    plots.draw_tradeoff(ax, R(results))
    labels = ax.get_legend_handles_labels()[1]
    assert "LEENet, budgets solved directly" in labels and "LEENet (learned gates)" in labels
    line = next(h for h, label in zip(*ax.get_legend_handles_labels()) if label == "LEENet, budgets solved directly")
    assert len(line.get_xdata()) == 40 and list(line.get_xdata()) == sorted(line.get_xdata())
    assert "leenet_budget" not in summary_table(R(results))  # the terminal table keeps to the alpha sweep


def test_report_says_when_routing_is_slower_than_the_backbone(tmp_path):
    results = make_results()
    assert "slower than the backbone" not in write_report(results, tmp_path / "fast").read_text()
    results["wall_clock"].update(device="cuda:0", measured_speedup=0.25)
    html = write_report(results, tmp_path / "slow").read_text()
    assert "0.25×" in html and "slower than the backbone" in html


def _figure_of(monkeypatch, plot, results: dict, tmp_path: Path):
    """The Figure ``plot`` draws, captured where it is saved."""
    figures = []
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or save(fig, path))
    plot(R(results), tmp_path / "plot.png")
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
    html = _operating_points(R(results))
    rows = html.split("<tbody>")[1].count("<tr>")
    assert rows == 5  # 6 LEENet points in 2 rows; entropy's miss on test keeps its own row; one unreachable
    assert "accuracy at ≤ 25%, 50%, 75%, 100% FLOPs; cost at ≤ 0.5 pt drop" in html
    assert "α=0.85, t=0.4" in html and "α=0.9, t=0.45" in html and "<td>t=0.63</td>" in html
    assert "<td>NO</td>" in html and "unreachable on calibration" in html
    results["selected"] = {**points[0], "threshold": 0.4}
    assert "α=0.85, t=0.4 (the selected setting)" in _operating_points(R(results))


def test_cards_name_the_selected_setting_with_why_it_was_chosen(tmp_path):
    results = make_results()
    results["selected"]["threshold"] = 0.5
    cards = _key_numbers(R(results))
    card = cards.split("<div class='card")[2]  # [1] opens the row of cards
    assert "selected model" in card and "α=0.3, t=0.5" in card and "(from --alpha)" in card
    flops = next(c for c in cards.split("<div class='card") if "FLOPs speed-up" in c)
    assert "from --alpha" not in flops


def test_slower_flag_names_throughput_or_latency_and_fits_the_device(tmp_path):
    clock = {"device": "cpu", "throughput_batch": 256, "measured_speedup": 1.81, "latency_speedup": 0.70,
             "flops_speedup": 3.0}
    flag = slower_flag(clock)
    assert "latency at batch 1 (0.70x)" in flag and "throughput" not in flag and "GPU" not in flag
    assert "slower than the backbone" in speed_line(clock)
    gpu = slower_flag({**clock, "device": "cuda:0", "measured_speedup": 0.5})
    assert "throughput at batch 256 (0.50x) and latency at batch 1" in gpu and "kernel launches" in gpu
    assert slower_flag({**clock, "latency_speedup": 1.2}) == ""
    assert "slower" not in speed_line({**clock, "latency_speedup": 1.2})
    results = make_results()
    results["wall_clock"].update(latency_speedup=0.7)
    page = write_report(results, tmp_path).read_text()
    assert "slower than the backbone in latency at batch 1" in page and "card warn" in page


def test_wall_clock_table_has_readable_labels_and_units(tmp_path):
    results = make_results()
    results["wall_clock"].update(latency_samples=64, latency_speedup=1.33)
    html = _wall_clock(R(results))
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
    html = _config(R(results))
    for text in ("digits_cnn (dataset default)", "block1, block2, block3 (the backbone&#x27;s default exits)",
                 "objective=hard, steps=300 (dataset default)", "hidden=16 (dataset default)",
                 "8 (the dataset&#x27;s)", "α=0.3", "<td>0.002</td>"):
        assert text in html, text
    assert "<td>none</td>" not in html.split("model.weights")[1][:40]
    assert "flatten (dataset default)" in html and "40 (dataset default)" in html
    del results["heads"], results["backbone"]["training"]  # a run older than those records: nothing guessed
    html = _config(R(results))
    assert "flatten" not in html and "<td>train.epochs</td><td>none</td>" in html


def test_policies_table_names_single_exits(tmp_path):
    html = _policies_section(make())
    assert "<td>single_exit</td><td>block2</td>" in html and "<td>single_exit</td><td>1</td>" not in html


def test_exit_fractions_shows_every_alpha_or_says_which(monkeypatch, tmp_path):
    results = make_results(n_alphas=21)
    fig = _figure_of(monkeypatch, plots.plot_exit_fractions, results, tmp_path)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 22 and "all 21 alphas" in ax.get_title()  # and the oracle
    results = make_results(n_alphas=41)
    leenet = [p for p in results["policies"] if p["method"] == "leenet"]
    results["selected"] = {**leenet[7], "reason": "budget"}
    ax = _figure_of(monkeypatch, plots.plot_exit_fractions, results, tmp_path).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "22 of 41 alphas (every 2nd, the last and the selected)" in ax.get_title(), ax.get_title()
    assert f"α = {leenet[7]['param']:.4g}" in labels and len(labels) == 23  # 21 every 2nd, the selected, oracle


def test_per_exit_accuracy_zooms_on_the_data_with_dots_and_keeps_labels_inside(monkeypatch, tmp_path):
    results = make_results()
    fig = _figure_of(monkeypatch, plots.plot_per_exit_accuracy, results, tmp_path)
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
    fig = _figure_of(monkeypatch, plots.plot_tradeoff, results, tmp_path)
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
    html = _operating_points(R(results))
    assert "2 / 3 seeds (NOT all)" in html and "3 / 3 seeds" in html and "seed 0: α=0.4, t=0.5" in html
    assert "each seed chooses its own setting" in html


def test_the_fine_tune_section_shows_each_epoch_and_the_kept_one(tmp_path):
    raw = make_results()
    raw["backbone"]["training"] = {"epochs": 4, "mode": "joint", "fine_tune": {
        "mode": "joint", "epochs": 2, "backbone_lr": 2e-4, "chosen_epoch": 2, "fell_back": False,
        "message": "kept epoch 2/2 <best>", "final_accuracy": [0.9, 0.91, 0.905],
        "early_accuracy": [[0.5, 0.6, 0.7], [0.55, 0.65, 0.75], [0.6, 0.7, 0.8]]}}
    page = write_report(raw, tmp_path).read_text()
    section = page.split("<h2>Backbone fine-tune</h2>", 1)[1].split("<h2>", 1)[0]
    assert "kept epoch 2/2 &lt;best&gt;" in section and "with its heads (joint)" in section
    assert re.search(r"<td>2/2</td><td>60\.00%</td><td>70\.00%</td><td>80\.00%</td><td>90\.50%</td><td>kept</td>",
                     section), section
    assert "Backbone fine-tune" not in write_report(make_results(), tmp_path / "frozen").read_text()
