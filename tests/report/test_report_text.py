"""leenet.report's terminal summary: its rows, their subsampling, and what the notes say."""

from __future__ import annotations

from report_fixtures import EXIT_NAMES, make_results

from leenet.report import Results, summary_table
from leenet.report.text import MAX_ROWS

R = Results.from_dict


def test_summary_table_rows():
    table, _, notes = summary_table(make_results()).partition("\n\n")
    lines = table.splitlines()
    assert "8 of 11 alphas" in notes and "* the saved model (α=0.3" in notes and "picked on test" in notes
    assert lines[0].split() == ["method", "param", "accuracy", "cost"]
    assert len({len(line) for line in lines}) == 1  # fixed width: the cost column is right-aligned
    assert lines[2].startswith("backbone") and "97.50%" in lines[2] and "1.000" in lines[2]
    for name in EXIT_NAMES:
        assert any(line.startswith("single exit") and name in line for line in lines)
    assert sum(line.startswith("leenet") for line in lines) == MAX_ROWS  # 11 alphas, subsampled
    assert any("alpha=0.3 *" in line for line in lines)
    assert sum(line.startswith("max_softmax") for line in lines) == 1
    assert sum(line.startswith("entropy") for line in lines) == 1
    assert lines[-1].startswith("oracle") and "99.10%" in lines[-1]


def test_summary_table_baseline_is_best_at_selected_cost():
    results = make_results()
    line = next(line for line in summary_table(R(results)).splitlines() if line.startswith("max_softmax"))
    budget = results["selected"]["cost"] + 0.01
    best = max((p for p in results["policies"] if p["method"] == "max_softmax" and p["cost"] <= budget),
               key=lambda p: p["accuracy"])
    assert f"t={best['param']:.4g}" in line


def test_summary_table_subsamples_alphas_keeping_selected():
    results = make_results(n_alphas=21)
    leenet = [p for p in results["policies"] if p["method"] == "leenet"]
    results["selected"] = {**leenet[7], "reason": "budget"}
    lines = [line for line in summary_table(R(results)).splitlines() if line.startswith("leenet")]
    assert len(lines) <= MAX_ROWS + 1
    assert any(f"alpha={leenet[7]['param']:.4g} *" in line for line in lines)


def test_summary_table_shows_std_and_selected_off_curve():
    results = make_results(with_std=True)
    results["selected"] = {"method": "max_softmax", "param": 0.8, "accuracy": 0.96, "cost": 0.5}
    table = summary_table(R(results))
    assert "±" in table
    assert any(line.startswith("max_softmax *") for line in table.splitlines())


def test_summary_table_without_selected_uses_mid_curve_cost():
    results = make_results(optional=False)
    leenet = sorted((p for p in results["policies"] if p["method"] == "leenet"), key=lambda p: p["cost"])
    line = next(line for line in summary_table(R(results)).splitlines() if line.startswith("entropy"))
    best = max((p for p in results["policies"] if p["method"] == "entropy" and p["cost"] <= leenet[5]["cost"] + 0.01),
               key=lambda p: p["accuracy"])
    assert f"t={best['param']:.4g}" in line and "*" not in summary_table(R(results))
