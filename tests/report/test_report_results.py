"""leenet.report.results: the typed results schema reads every known version, round-trips, refuses damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_fixtures import make_results

from leenet.errors import LeenetError
from leenet.report import SCHEMA_VERSION, Results, read_results, write_results
from leenet.report.results import OperatingPoint, Policy, Selected, WallClock

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((ROOT / "benchmarks" / "results").glob("*/results.json"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.parent.name for p in BENCHMARKS])
def test_committed_version_1_files_read_and_round_trip(path, tmp_path):
    raw = json.loads(path.read_text())
    results = read_results(path)
    assert "schema_version" not in raw and results.schema_version == SCHEMA_VERSION  # migrated on reading
    assert len(results.policies) == len(raw["policies"]) and results.exits[0].name == raw["exits"][0]["name"]
    assert isinstance(results.policies[0], Policy) and isinstance(results.selected, Selected)
    if "seeds" in raw:  # a multi-seed benchmark: its own records are kept verbatim
        assert results.seeds == tuple(raw["seeds"]) and results.extra["levers"] == raw["levers"]
    again = read_results(write_results(tmp_path / "results.json", results))
    assert again == results
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION
    assert written["policies"][0] == {k: v for k, v in raw["policies"][0].items()}  # same layout as before


def test_optional_sections_are_none_and_left_out_of_the_file(tmp_path):
    results = Results.from_dict(make_results(optional=False))
    assert results.selected is None and results.wall_clock is None and results.gallery is None
    written = json.loads(write_results(tmp_path / "r.json", results).read_text())
    assert "selected" not in written and "gallery" not in written and "threshold" not in written["policies"][0]


def test_version_1_operating_points_without_reachable_were_reachable():
    results = Results.from_dict(make_results())
    first, second = results.operating_points
    assert isinstance(first, OperatingPoint) and first.reachable and first.kind is None
    assert not second.reachable and second.accuracy is None


def test_exit_indices_stay_whole_numbers_and_figures_become_floats():
    raw = make_results()
    raw["exits"][0]["accuracy"] = 1  # a JSON integer where a fraction is due
    results = Results.from_dict(raw)
    single = next(p for p in results.policies if p.method == "single_exit")
    assert isinstance(single.param, int) and isinstance(results.exits[0].accuracy, float)
    assert isinstance(next(p for p in results.policies if p.method == "leenet").param, float)


@pytest.mark.parametrize("edit, hint", [
    (lambda r: r["policies"][0].update(cost=None), "results.policies[0].cost is not a number"),
    (lambda r: r["policies"][0].pop("accuracy"), "results.policies[0] lacks 'accuracy'"),
    (lambda r: r["exits"].__setitem__(0, "block1"), "results.exits[0] is not an object"),
    (lambda r: r["backbone"].update(flops="many"), "results.backbone.flops is not a whole number or null"),
    (lambda r: r["selected"].update(exit_fractions=[0.5, "x"]), "results.selected.exit_fractions is not a list"),
    (lambda r: r["wall_clock"].update(measured_speedup=True), "results.wall_clock.measured_speedup"),
    (lambda r: r.pop("exits"), "not a LEENet results file (it lacks exits)"),
    (lambda r: r.update(schema_version=99), "schema version 99"),
])
def test_damaged_results_are_refused_in_one_line(edit, hint):
    raw = make_results()
    edit(raw)
    with pytest.raises(LeenetError) as info:
        Results.from_dict(raw)
    message = str(info.value)
    assert hint in message and "\n" not in message, message


@pytest.mark.parametrize("content, hint", [("{", "cannot read"), ("[]", "not a LEENet results file"),
                                           ("\xff\xfe", "cannot read"), ("{}", "lacks exits")])
def test_read_results_refuses_unreadable_files(tmp_path, content, hint):
    path = tmp_path / "results.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(LeenetError, match=hint):
        read_results(path)
    with pytest.raises(LeenetError, match="cannot read"):
        read_results(tmp_path / "missing.json")


def test_wall_clock_reads_from_a_plain_dict_and_leaves_unmeasured_figures_none():
    from leenet.report.common import as_wall_clock

    clock = as_wall_clock({"device": "cpu", "measured_speedup": 2})
    assert clock == WallClock(device="cpu", measured_speedup=2.0) and clock.latency_speedup is None


def test_a_run_dict_may_hold_typed_sections_and_paths(tmp_path):
    """What the pipeline hands over: its results dict, with the gallery section already typed."""
    from report_fixtures import digits_outputs

    from leenet.report import gallery_from_outputs

    section, _ = gallery_from_outputs(**digits_outputs())
    raw = {**make_results(), "gallery": section}
    raw["config"]["out"] = tmp_path / "run"
    results = Results.from_dict(raw)
    assert results.gallery is section
    again = read_results(write_results(tmp_path / "results.json", results))
    assert again.gallery == section and again.config["out"] == str(tmp_path / "run")


def test_version_2_runs_kept_their_backbone_frozen_and_version_3_records_the_fine_tune(tmp_path):
    raw = make_results()
    raw.update(schema_version=2, operating_points=[{"reachable": True, **p} for p in raw["operating_points"]])
    raw["backbone"]["training"] = {"epochs": 40, "lr": 0.05, "precision": "fp32", "transfer": False}
    old = Results.from_dict(raw)
    assert old.schema_version == SCHEMA_VERSION == 3
    assert old.backbone.training.mode == "frozen" and old.backbone.training.fine_tune is None
    tuned = {"mode": "joint", "epochs": 2, "backbone_lr": 2e-4, "chosen_epoch": 1, "fell_back": False,
             "message": "kept epoch 1/2", "final_accuracy": [0.9, 0.91, 0.89],
             "early_accuracy": [[0.5, 0.7], [0.6, 0.8], [0.7, 0.9]], "head_lr": 2e-3}
    raw.update(schema_version=3)
    raw["backbone"]["training"] = {"epochs": 40, "mode": "joint", "fine_tune": tuned}
    new = Results.from_dict(raw)
    assert new.backbone.training.fine_tune.early_accuracy == ((0.5, 0.7), (0.6, 0.8), (0.7, 0.9))
    assert read_results(write_results(tmp_path / "r.json", new)) == new
    raw["backbone"]["training"]["fine_tune"].pop("chosen_epoch")
    with pytest.raises(LeenetError, match="lacks 'chosen_epoch'"):
        Results.from_dict(raw)
