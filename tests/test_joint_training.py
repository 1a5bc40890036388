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


def _images(rng: np.random.Generator, n: int = 400) -> dict:
    point = {"correct": rng.random(n) < 0.8, "cost": rng.random(n)}
    return {"exits": rng.random((3, n)) < 0.8, "points": {study.POINTS[0]: point}}


def test_pairs_are_taken_over_the_seeds_that_ran_both_arms() -> None:
    rng = np.random.default_rng(1)
    by_seed = {0: {"A": _images(rng), "E": _images(rng)}, 1: {"A": _images(rng)}, 2: {"A": _images(rng), "E": _images(rng)}}
    rows = study.paired(by_seed, "E", "A")
    assert rows["seeds"] == [0, 2]
    exit0 = rows["exit 0"]
    assert [r["seed"] for r in exit0["per_seed"]] == [0, 2]
    expected = [by_seed[k]["E"]["exits"][0].mean() - by_seed[k]["A"]["exits"][0].mean() for k in (0, 2)]
    assert [r["diff"] for r in exit0["per_seed"]] == pytest.approx(expected)
    assert exit0["mean_diff"] == pytest.approx(np.mean(expected))
    cost = {arm: by_seed[2][arm]["points"][study.POINTS[0]]["cost"].mean() for arm in "EA"}
    assert rows[f"{study.POINTS[0]} (cost)"]["per_seed"][1]["diff"] == pytest.approx(cost["E"] - cost["A"])
    assert study.paired(by_seed, "F", "A") is None, "no seed ran F"


def test_every_joint_arm_has_a_control_fine_tuned_alone_at_its_learning_rate() -> None:
    for joint, control in study.CONTROL.items():
        assert study.ARMS[joint][0] == "joint" and study.ARMS[control][0] == "finetune"
        assert study.ARMS[joint][2:] == study.ARMS[control][2:], (joint, control)  # learning rate and length
        assert (joint, control) in study.PAIRS
    joint_arms = {a for a, (mode, *_) in study.ARMS.items() if mode == "joint"}
    assert joint_arms == set(study.CONTROL) | study.EXPLORATORY and not set(study.CONTROL) & study.EXPLORATORY
    assert not study.EXPLORATORY & set(study.DEFAULT_ARMS), "an arm without a control is asked for by name"


@pytest.mark.slow  # 14 digits runs, about two minutes
def test_the_smoke_study_runs_and_pairs_the_arms(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_training.py"), "--smoke", "--seeds", "0",
                           "1", "--runs", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "study.json").read_text())
    assert (tmp_path / "tradeoff.png").is_file() and results["setup"]["seeds"] == [0, 1]
    for arm, row in results["arms"].items():
        assert row["rerouted_match_runs"], arm
        assert (row["fine_tune"][0] is None) == (arm == "A")
    for arm in "CDEF":  # every fine-tune starts from the same backbone
        assert [t["final_accuracy"][0] for t in results["arms"][arm]["fine_tune"]] == \
            [t["final_accuracy"][0] for t in results["arms"]["B"]["fine_tune"]]
    assert set(results["paired"]) == {f"{a} - {b}" for a, b in study.PAIRS if {a, b} <= set(study.DEFAULT_ARMS)}
    assert len(results["paired"]["C - A"]["exit 0"]["per_seed"]) == 2
    # the seeds' figures are kept: a report from them alone runs nothing and gives the same study
    (tmp_path / "study.json").rename(tmp_path / "first.json")
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_training.py"), "--smoke", "--seeds", "0",
                            "1", "--runs", str(tmp_path / "absent"), "--out", str(tmp_path), "--report"],
                           capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (tmp_path / "absent").exists()
    reported = json.loads((tmp_path / "study.json").read_text())
    assert reported["arms"] == results["arms"] and reported["paired"] == results["paired"]
