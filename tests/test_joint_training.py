"""benchmarks/joint_training.py: its paired statistics against references, and (slow) the whole study in
its smoke mode, whose arms share the backbone and whose re-routed operating points match the runs'."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import joint_training as study  # noqa: E402


@pytest.mark.parametrize(("only_a", "only_b", "both"), [(0, 0, 5), (3, 9, 40), (12, 2, 0), (7, 7, 1)])
def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs(only_a: int, only_b: int, both: int) -> None:
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * 4)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * 4)
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert study.mcnemar(a, b) == pytest.approx(expected)


def test_paired_bootstrap_centres_on_the_mean_difference_and_narrows_with_agreement() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.9
    b = a.copy()
    b[:100] = ~b[:100]  # 100 images differ
    wide = study.paired_bootstrap(a, b)
    assert wide["diff"] == pytest.approx(a.mean() - b.mean())
    assert wide["ci95"][0] < wide["diff"] < wide["ci95"][1]
    same = study.paired_bootstrap(a, a)
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0]}, "identical arms: no difference at all"


@pytest.mark.slow  # 10 digits runs, about a minute
def test_the_smoke_study_runs_and_pairs_the_arms(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_training.py"), "--smoke", "--seeds", "0",
                           "1", "--runs", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "tradeoff.png").is_file() and results["setup"]["seeds"] == [0, 1]
    for arm, row in results["arms"].items():
        assert row["rerouted_match_runs"], arm
        assert (row["fine_tune"][0] is None) == (arm == "A")
    for arm in ("C", "D"):  # every fine-tune starts from the same backbone
        assert [t["final_accuracy"][0] for t in results["arms"][arm]["fine_tune"]] == \
            [t["final_accuracy"][0] for t in results["arms"]["B"]["fine_tune"]]
    assert set(results["paired"]) == {"B - A", "C - A", "C - B", "D - A", "D - B", "D - C"}
    assert len(results["paired"]["C - A"]["exit 0"]["per_seed"]) == 2
