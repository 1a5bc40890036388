"""The benchmark's table printer on the committed results files (what the pages under docs/benchmarks/ quote)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("fashion_mnist*/results.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.parent.name for p in RESULTS])
def test_tables_print_every_target_with_paired_errors(path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tables.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| (a) cost of the cheapest setting within 0.5 pt on calibration |" in out
    assert "| (b) paired standard error of the worst gap, solved budgets (pt) |" in out
    assert "most significant loss, whole family" in out
    assert "n/a" not in out.split("| measure")[1].split("| budget |")[0]  # every target measured
    assert "LEENet curve (threshold 0.5): α=0 " in out
    assert "budgets keep 1.5 standard errors of slack" in out  # the margin the committed run used


def test_results_files_are_committed():
    assert {p.parent.name for p in RESULTS} == {"fashion_mnist", "fashion_mnist_sdn"}
