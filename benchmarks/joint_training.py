"""Does training the backbone with its exits move the frontier, or is a gain just more training?

Arms of ``leenet run`` that differ in how the backbone is trained after its exits are fitted,
on the same seeds, splits, trained backbone, heads' initialization and test images: **A** ``frozen``
(today), **B** ``finetune`` (the backbone fine-tuned alone, then the heads fitted frozen: the
control, as much extra training as C), **C** ``joint`` (the backbone fine-tuned with its fitted
heads, the early exits' weights ramped up as SDN does), **D** ``joint`` with IMTA's gradient
equilibrium instead of the ramp (``TrainConfig.joint_weighting``), **E** C with the backbone at a
fifth of C's learning rate (``backbone_lr_scale`` 0.02, since C's first epoch costs the final exit
most) and **F** B at E's rate, E's control (CONTROL pairs each joint arm with the fine-tune alone at
its learning rate); **G**, asked for by name, is E for the backbone's full epochs instead of a
quarter, without a control (EXPLORATORY): how far a longer fine-tune goes, not a claim. Per seed the
backbone is trained once by a ``leenet run`` at the dataset's recipe, and each arm starts from its
``model.pt`` (``--weights``, ``--epochs 0``) with the fine-tune at a quarter of the backbone's
epochs (G: all of them).

Reported per arm (means over the seeds that ran it): each exit's test accuracy, LEENet's operating
points, the training time of the arm (heads + fine-tune; the backbone is shared). Paired on the same
test images, for each pair in PAIRS over the seeds that ran both arms: McNemar's exact test on each
exit and operating point's per-image correctness, a paired bootstrap interval of each accuracy and
cost difference. The operating points are re-routed from each arm's ``model.pt`` (its gates for the
chosen alpha and threshold) to get per-image figures, and checked against the run's own numbers; so
is every policy of the alpha curve and of both threshold baselines, for the paired standard error of
LEENet's worst gap.

On the project's 2-core Intel Xeon VM a seed's backbone takes about 32 minutes and each arm 10 to 28
(heads, fine-tune, gates, evaluation; G about an hour). From the repository root::

    OMP_NUM_THREADS=2 python benchmarks/joint_training.py --seeds 0 1 2 --arms E F   # A always runs
    OMP_NUM_THREADS=2 python benchmarks/joint_training.py --seeds 1 --arms G         # the longer fine-tune
    OMP_NUM_THREADS=2 python benchmarks/joint_training.py --seeds 0 1 2 --report     # every kept arm

writes ``benchmarks/results/joint_training/study.json``, ``summary.md`` (the docs' tables) and
``tradeoff.png`` (runs under ``runs/joint_training/``; a finished run is reused). Each seed's figures
are also kept in ``seeds/seed<k>.json`` and ``.npz`` there and read back instead of its runs: an arm
a seed lacks is run and added, so the study can grow an arm or a seed at a time across sessions and
machines, and ``--report`` summarizes what is kept without running anything. ``--smoke`` checks the
machinery in a minute or two on digits with tiny epochs, writing to ``runs/joint_training_smoke/``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import mean_std  # noqa: E402
from fmnist_backbone import CALIB_SIZE  # noqa: E402

from leenet import (  # noqa: E402
    CachedOutputs,
    DataConfig,
    GateTrainConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    confidence_scores,
    envelope_gap,
    first_exit,
    load_checkpoint,
    load_dataset,
    make_loader,
    run,
)
from leenet.evaluate.compare import BASELINES, GAP_TOL, paired_stderr  # noqa: E402
from leenet.policy.simulate import gate_probabilities, threshold_exits  # noqa: E402

FINETUNE_SHARE = 0.25  # of the backbone's epochs (the library's default)
# arm -> (mode, joint weighting, the backbone's share of the heads' learning rate, the fine-tune's share of the
# backbone's epochs)
ARMS = {"A": ("frozen", "ramp", 0.1, FINETUNE_SHARE), "B": ("finetune", "ramp", 0.1, FINETUNE_SHARE),
        "C": ("joint", "ramp", 0.1, FINETUNE_SHARE), "D": ("joint", "equilibrium", 0.1, FINETUNE_SHARE),
        "E": ("joint", "ramp", 0.02, FINETUNE_SHARE), "F": ("finetune", "ramp", 0.02, FINETUNE_SHARE),
        "G": ("joint", "ramp", 0.02, 1.0)}
NAMES = {"A": "frozen", "B": "finetune", "C": "joint, SDN ramp", "D": "joint, gradient equilibrium",
         "E": "joint, SDN ramp, backbone lr x0.2", "F": "finetune, backbone lr x0.2",
         "G": "E for the backbone's full epochs"}
CONTROL = {"C": "B", "D": "B", "E": "F"}  # joint arm -> the backbone fine-tuned alone at the same learning rate
# joint arms run without a control, to see how far a setting goes, not to claim a gain: G, E four times as long
# (its control, F as long, would be another hour a seed on the project's VM)
EXPLORATORY = {"G"}
DEFAULT_ARMS = [arm for arm in ARMS if arm not in EXPLORATORY]
PAIRS = (("B", "A"), ("C", "A"), ("C", "B"), ("D", "A"), ("D", "B"), ("D", "C"), ("E", "A"), ("E", "B"), ("E", "C"),
         ("F", "A"), ("E", "F"), ("G", "A"), ("G", "E"))
POINTS = ("accuracy at <= 25% FLOPs", "accuracy at <= 50% FLOPs", "accuracy at <= 75% FLOPs",
          "cost at <= 0.5 pt drop", "cost at <= 1 pt drop")
BOOTSTRAP = 2000  # paired resamples of the test images
KEPT = ("chosen_epoch", "fell_back", "final_accuracy", "early_accuracy", "message")  # of each fine-tune's record


@dataclass(frozen=True)
class Setup:
    """What every run of the study shares."""

    dataset: str
    epochs: int  # backbone epochs
    calib_size: float
    head_epochs: int | None = None  # None: the dataset's default
    alphas: tuple[float, ...] | None = None  # None: the library's sweep
    gates: GateTrainConfig | None = None  # None: the dataset's default

    def finetune_epochs(self, share: float = FINETUNE_SHARE) -> int:
        return max(1, round(share * self.epochs))


FULL = Setup("fashion-mnist", 24, CALIB_SIZE)  # the dataset defaults: small_resnet, deep heads, predict gates
SMOKE = Setup("digits", 4, 0.2, head_epochs=3, alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
              gates=GateTrainConfig(objective="hard", loss="ce", steps=30))


BACKBONE_ONLY = GateTrainConfig(objective="hard", loss="ce", steps=1)  # the backbone run's gates: a formality


def config(setup: Setup, seed: int, out: Path, arm: str = "A", weights: Path | None = None) -> RunConfig:
    """An arm of the study from the backbone in ``weights``, kept as it is before its fine-tune; without
    ``weights``, the run that trains that backbone (no heads, one alpha: only its model.pt is used)."""
    if weights is None:
        train = TrainConfig(epochs=setup.epochs, head_epochs=0, gates=BACKBONE_ONLY)
    else:
        mode, weighting, lr_scale, share = ARMS[arm]
        train = TrainConfig(epochs=0, head_epochs=setup.head_epochs, gates=setup.gates, backbone_training=mode,
                            finetune_epochs=setup.finetune_epochs(share), joint_weighting=weighting,
                            backbone_lr_scale=lr_scale)
    alphas = (0.0,) if weights is None else setup.alphas
    return RunConfig(data=DataConfig(dataset=setup.dataset, calib_size=setup.calib_size),
                     model=ModelConfig(weights=None if weights is None else str(weights.resolve())), train=train,
                     seed=seed, out=str(out), timing=False, progress=False, overwrite=True,
                     **({} if alphas is None else {"alphas": alphas}))


def finished(out: Path, cfg: RunConfig, log) -> tuple[dict, float]:
    """The run's results and its wall seconds: read back when it finished before, else run now."""
    if (out / "results.json").is_file() and (out / "wall.json").is_file():
        return json.loads((out / "results.json").read_text()), json.loads((out / "wall.json").read_text())["seconds"]
    start = time.perf_counter()
    run(cfg, log=log)
    seconds = time.perf_counter() - start
    (out / "wall.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return json.loads((out / "results.json").read_text()), seconds


@torch.no_grad()
def per_image(run_dir: Path, results: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-test-image correctness of every exit and of LEENet's operating points (and their per-image
    cost), re-routed from the run's model.pt; each checked against the figure the run reported."""
    net = load_checkpoint(run_dir / "model.pt")
    out = net.forward_all(x)
    exits = (out.logits.argmax(-1) == y[:, None]).T.numpy()  # (E, N)
    reported = [e["accuracy"] for e in results["exits"]]
    assert np.allclose(exits.mean(1), reported, atol=1e-6), (exits.mean(1), reported)
    versus = versus_thresholds_paired(run_dir, results, CachedOutputs(out.logits, out.pooled, y), net.gate_config,
                                      float(net.cost[0]))
    points = {}
    for point in results["operating_points"]:
        if point["method"] != "leenet" or point["name"] not in POINTS or not point["reachable"]:
            continue
        routed = load_checkpoint(run_dir / "model.pt", alpha=point["param"])
        routed.threshold = point["threshold"]
        logits, exit_index = routed(x)
        cost = routed.routed_cost()[exit_index]
        points[point["name"]] = {"correct": (logits.argmax(-1) == y).numpy(), "cost": cost.double().numpy(),
                                 "matches_run": math.isclose(float((logits.argmax(-1) == y).double().mean()),
                                                             point["accuracy"], abs_tol=1e-6)}
    return {"exits": exits, "points": points, "versus_thresholds": versus}


def versus_thresholds_paired(run_dir: Path, results: dict, test: CachedOutputs, gate_config, lo: float) -> dict:
    """LEENet's alpha curve against the threshold baselines' envelope on test (the run's own
    ``versus_thresholds``), with the paired standard error of the gap at its worst point: each
    policy of both families re-routed per image from the run's model.pt (gates of every alpha) and
    exit logits, each checked against the accuracy the run reported; ``lo``: the first exit's cost."""
    correct = test.correct  # (N, E)
    rows = torch.arange(len(correct))

    def outcome(exit_index: torch.Tensor, reported: float) -> np.ndarray:
        hits = correct[rows, exit_index].numpy()
        assert math.isclose(float(hits.mean()), reported, abs_tol=1e-6), (float(hits.mean()), reported)
        return hits

    ours, ours_points = [], []
    inputs = test.gate_inputs(gate_config)
    for p in (p for p in results["policies"] if p["method"] == "leenet"):
        gates = load_checkpoint(run_dir / "model.pt", alpha=p["param"]).gates
        ours.append(outcome(first_exit(gate_probabilities(gates, inputs) >= p["threshold"]), p["accuracy"]))
        ours_points.append((p["cost"], p["accuracy"]))
    theirs, their_points = [], []
    for kind in BASELINES:
        scores = confidence_scores(test.logits, kind)
        for p in (p for p in results["policies"] if p["method"] == kind):
            theirs.append(outcome(threshold_exits(scores, p["param"]), p["accuracy"]))
            their_points.append((p["cost"], p["accuracy"]))
    ours, theirs = np.stack(ours), np.stack(theirs)
    gap = envelope_gap(ours_points, their_points, lo, 1.0, GAP_TOL, outcomes=(ours, theirs))
    assert math.isclose(gap["area"], results["versus_thresholds"]["leenet"]["area"], abs_tol=1e-9)
    keep = ("area", "worst_gap", "worst_cost", "worst_stderr", "min_z", "min_z_cost", "min_z_gap")
    out = {"alpha_curve": {k: gap[k] for k in keep if k in gap}}
    out["alpha_curve"]["holds"] = gap["area"] > 0 and gap["worst_gap"] >= -2 * gap["worst_stderr"]
    budget = [(p["cost"], p["accuracy"]) for p in results["policies"] if p["method"] == "leenet_budget"]
    if budget:  # the budget curve's gates are solved from predictors model.pt does not keep: its figures are
        # the run's; the standard error is the alpha curve's paired one at the budget curve's worst cost
        solved = envelope_gap(budget, their_points, lo, 1.0, GAP_TOL)
        c = solved["worst_cost"]
        stderr = float(paired_stderr(ours[_member(ours_points, c)], theirs[_member(their_points, c)]))
        out["budget_curve"] = {"area": solved["area"], "worst_gap": solved["worst_gap"], "worst_cost": c,
                               "alpha_curve_stderr_there": stderr,
                               "holds": solved["area"] > 0 and solved["worst_gap"] >= -2 * stderr}
    return out


def _member(points: list[tuple[float, float]], cost: float) -> int:
    """Index of the most accurate of ``points`` (cost, accuracy) within ``cost`` (+ the gap tolerance); the
    cheapest when none is."""
    within = [k for k, (c, _) in enumerate(points) if c <= cost + GAP_TOL]
    if not within:
        return min(range(len(points)), key=lambda k: points[k][0])
    return max(within, key=lambda k: (points[k][1], -points[k][0]))


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two paired correctness vectors (N,) bool."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Mean of ``a - b`` over the test images (N,) and its 95 % paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    diff = a.astype(float) - b.astype(float)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(1)
    return {"diff": float(diff.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def paired(by_seed: dict[int, dict], first: str, second: str) -> dict | None:
    """``first - second`` for every exit and operating point: per seed (bootstrap, McNemar) and mean over
    the seeds that ran both arms (``by_seed``: seed -> arm -> per-image figures); None when no seed did."""
    common_seeds = [k for k, arms in by_seed.items() if first in arms and second in arms]
    if not common_seeds:
        return None
    seeds = [by_seed[k] for k in common_seeds]
    out = {"seeds": common_seeds}
    names = [f"exit {i}" for i in range(len(seeds[0][first]["exits"]))]
    items = [(name, lambda s, arm, i=i: s[arm]["exits"][i], "correct") for i, name in enumerate(names)]
    common = set.intersection(*(set(s[first]["points"]) & set(s[second]["points"]) for s in seeds))
    for name in (p for p in POINTS if p in common):
        items.append((name, lambda s, arm, n=name: s[arm]["points"][n]["correct"], "correct"))
        items.append((f"{name} (cost)", lambda s, arm, n=name: s[arm]["points"][n]["cost"], "cost"))
    for name, get, kind in items:
        per_seed = []
        for k, s in enumerate(seeds):
            a, b = get(s, first), get(s, second)
            row = {"seed": common_seeds[k], **paired_bootstrap(a, b, seed=k)}
            if kind == "correct":
                row["mcnemar_p"] = mcnemar(a, b)
            per_seed.append(row)
        mean, std = mean_std([r["diff"] for r in per_seed])
        out[name] = {"mean_diff": mean, "std_diff": std, "per_seed": per_seed}
    return out


def arm_summary(arm_results: list[dict], arm_images: list[dict], seconds: list[float]) -> dict:
    """One arm's means over its seeds: exits, operating points, the fine-tune's choice, its training time."""
    exits = np.array([[e["accuracy"] for e in r["exits"]] for r in arm_results])
    points = {}
    for name in POINTS:
        rows = [p for r in arm_results for p in r["operating_points"] if p["method"] == "leenet" and p["name"] == name
                and p["reachable"]]
        if len(rows) == len(arm_results):
            points[name] = {"accuracy": mean_std([p["accuracy"] for p in rows]), "cost": mean_std([p["cost"] for p in rows])}
    training = [r["timings"].get("heads", 0.0) + r["timings"].get("finetune", 0.0) for r in arm_results]
    tunes = [r["backbone"]["training"].get("fine_tune") for r in arm_results]
    return {"exit_accuracy": exits.mean(0).tolist(), "exit_accuracy_std": exits.std(0, ddof=1).tolist()
            if len(exits) > 1 else None, "operating_points": points, "training_seconds": mean_std(training),
            "run_seconds": mean_std(seconds),
            "fine_tune": [None if t is None else {k: v for k, v in t.items() if k in KEPT} for t in tunes],
            "rerouted_match_runs": all(p["matches_run"] for s in arm_images for p in s["points"].values()),
            "versus_thresholds": [s["versus_thresholds"] for s in arm_images]}


def goals(arms: dict, pairs: dict) -> dict:
    """Each arm's figures against the study's goals (means over the arm's seeds; "frozen backbone" is arm
    A's final exit on the same seeds)."""
    final = f"exit {len(arms['A']['exit_accuracy']) - 1}"
    out = {}
    for arm, row in arms.items():
        points, frozen_final = row["operating_points"], row["frozen_final_exit"]

        def figure(name: str, key: str, points=points) -> float | None:
            return points[name][key][0] if name in points else None

        acc25, cost05, acc75 = (figure("accuracy at <= 25% FLOPs", "accuracy"), figure("cost at <= 0.5 pt drop", "cost"),
                                figure("accuracy at <= 75% FLOPs", "accuracy"))
        out[arm] = {
            "accuracy at <= 25% FLOPs >= 93.5 %": [acc25, acc25 is not None and acc25 >= 0.935],
            "cost at <= 0.5 pt drop <= 0.22 (the arm's own final exit as reference)": [
                cost05, cost05 is not None and cost05 <= 0.22],
            "accuracy at <= 75% FLOPs >= frozen backbone + 0.2 pt": [
                acc75, acc75 is not None and acc75 >= frozen_final + 0.002],
            "solved budgets ahead of or level with thresholds (area > 0, worst gap within 2 paired SE), every seed": [
                [v["budget_curve"]["area"] for v in row["versus_thresholds"] if "budget_curve" in v],
                all("budget_curve" in v and v["budget_curve"]["holds"] for v in row["versus_thresholds"])],
            "alpha curve ahead of or level with thresholds (area > 0, worst gap within 2 paired SE), every seed": [
                [v["alpha_curve"]["area"] for v in row["versus_thresholds"]],
                all(v["alpha_curve"]["holds"] for v in row["versus_thresholds"])],
        }
    for arm in (a for a in arms if f"{a} - {CONTROL.get(a)}" in pairs):
        diff = pairs[f"{arm} - {CONTROL[arm]}"][final]["mean_diff"]
        out[arm][f"final exit no worse than its control {CONTROL[arm]}'s by more than 0.1 pt (paired)"] = [
            diff, diff >= -0.001]
    return out


def markdown(summary: dict) -> str:
    """The tables of the docs page: each arm's exits, operating points and training time; the paired
    differences against A and B; the goals (test figures, means over the seeds run)."""
    arms, pct = summary["arms"], (lambda v: "–" if v is None else f"{100 * v:.2f} %")
    exits = len(arms["A"]["exit_accuracy"])
    lines = ["| arm | " + " | ".join(f"exit {i}" for i in range(exits)) + " | " + " | ".join(POINTS)
             + " | heads + fine-tune (s) | fine-tune kept | seeds |", "|---" * (exits + len(POINTS) + 4) + "|"]
    for arm, row in arms.items():
        points = row["operating_points"]
        cells = [pct(a) for a in row["exit_accuracy"]]
        for name in POINTS:
            key = "cost" if name.startswith("cost") else "accuracy"
            value = points[name][key][0] if name in points else None
            cells.append("–" if value is None else f"{value:.3f}" if key == "cost" else pct(value))
        kept = ", ".join("–" if t is None else f"epoch {t['chosen_epoch']}" + (" (fell back)" if t["fell_back"] else "")
                         for t in row["fine_tune"])
        lines.append(f"| {arm} {row['mode']} | " + " | ".join(cells) + f" | {row['training_seconds'][0]:.0f} | {kept} |"
                     f" {', '.join(map(str, row['seeds']))} |")
    lines += ["", "| difference (paired, test) | " + " | ".join(f"exit {i}" for i in range(exits)) + " | seeds |",
              "|---" * (exits + 2) + "|"]
    for pair, rows in summary["paired"].items():
        cells = []
        for i in range(exits):
            r = rows[f"exit {i}"]
            p = min(s.get("mcnemar_p", 1.0) for s in r["per_seed"])
            cells.append(f"{100 * r['mean_diff']:+.2f} pt (p {p:.2g})")
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {', '.join(map(str, rows['seeds']))} |")
    lines += ["", "| arm | goal | figure | met |", "|---|---|---|---|"]
    for arm, goals_ in summary["goals"].items():
        for name, (value, ok) in goals_.items():
            shown = (", ".join(f"{v:.5f}" for v in value) if isinstance(value, list)
                     else "–" if value is None else f"{value:.4f}")
            lines.append(f"| {arm} | {name} | {shown} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def curve(results: dict, method: str) -> tuple[list[float], list[float]]:
    points = sorted((p["cost"], p["accuracy"]) for p in results["policies"] if p["method"] == method)
    return [c for c, _ in points], [a for _, a in points]


def plot(per_arm: dict[str, dict[int, dict]], path: Path) -> None:
    """Accuracy against cost on test: each arm's LEENet sweep and max-softmax thresholds, its exits, on
    the first seed every drawn arm ran (each arm's first seed where there is none); an arm whose
    fine-tune fell back is A's network, named in the title instead of drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    same = [arm for arm, runs in per_arm.items() if (runs[min(runs)]["backbone"]["training"].get("fine_tune")
                                                     or {}).get("fell_back")]
    drawn = {arm: runs for arm, runs in per_arm.items() if arm not in same}
    common = sorted(set.intersection(*(set(runs) for runs in drawn.values()))) if drawn else []
    colours = dict(zip(ARMS, ("tab:grey", "tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple",
                                  "tab:brown")))
    for arm, runs in drawn.items():
        first, colour = runs[common[0] if common else min(runs)], colours[arm]
        ax.plot(*curve(first, "leenet"), "-o", ms=3, color=colour, label=f"{arm} {NAMES[arm]}: LEENet")
        ax.plot(*curve(first, "max_softmax"), ":", color=colour, label=f"{arm} {NAMES[arm]}: max-softmax")
        ax.plot([e["cost"] for e in first["exits"]], [e["accuracy"] for e in first["exits"]], "s", color=colour, ms=5)
    ax.set_xlabel("mean cost (share of the backbone's FLOPs)")
    ax.set_ylabel("test accuracy")
    kept_frozen = f"; {', '.join(same)} kept the frozen network (= A)" if same else ""
    on = f"seed {common[0]}" if common else "their first seed"
    ax.set_title(f"Arms on {on} (squares: single exits){kept_frozen}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def backbone_dir(runs_dir: Path, seed: int) -> Path:
    """Where a seed's backbone run lives: every arm of the seed starts from its ``model.pt``."""
    return runs_dir / f"seed{seed}" / "backbone"


def run_seed(setup: Setup, runs_dir: Path, seed: int, arms: list[str]) -> dict:
    """One seed: its backbone and arms, trained now unless their runs finished before, and each
    arm's per-image figures on the test split."""
    def log(message: str) -> None:
        print(f"[seed {seed}] {message}", file=sys.stderr, flush=True)
    home = backbone_dir(runs_dir, seed)
    backbone, backbone_seconds = finished(home, config(setup, seed, home), log)
    splits = load_dataset(setup.dataset, calib_size=int(setup.calib_size) if setup.calib_size >= 1
                          else setup.calib_size, seed=seed)
    x, y = (torch.cat(t) for t in zip(*make_loader(splits.test, 1000, train=False)))
    out = {"backbone": {"seed": seed, "accuracy": backbone["backbone"]["accuracy"], "seconds": backbone_seconds,
                        "backbone_phase_seconds": backbone["timings"]["backbone"]}, "arms": {}}
    for arm in arms:
        where = runs_dir / f"seed{seed}" / arm
        results, wall = finished(where, config(setup, seed, where, arm, weights=home / "model.pt"), log)
        out["arms"][arm] = {"results": results, "seconds": wall, "images": per_image(where, results, x, y)}
    return out


SAVED_RESULTS = ("exits", "operating_points", "policies", "timings", "backbone", "versus_thresholds")


def save_seed(out: Path, seed: int, figures: dict, before: dict | None = None) -> None:
    """Keep one seed's figures under ``out/seeds/`` (JSON and the per-image arrays), so that the
    study can grow a seed at a time without the seed's runs; ``before``, the seed's figures kept
    earlier (as :func:`load_seed` read them), keeps the arms this call did not run."""
    home = out / "seeds"
    home.mkdir(parents=True, exist_ok=True)
    arrays, arms = {}, {}
    if before is not None:  # keep the arms saved before that this call did not run
        if before["backbone"]["accuracy"] != figures["backbone"]["accuracy"]:
            raise RuntimeError(f"seed {seed}: the backbone's test accuracy differs from the kept arms' one")
        figures = {"backbone": figures["backbone"], "arms": {**before["arms"], **figures["arms"]}}
    for arm, f in figures["arms"].items():
        arrays[f"{arm}/exits"] = f["images"]["exits"]
        for name, point in f["images"]["points"].items():
            arrays[f"{arm}/{name}/correct"], arrays[f"{arm}/{name}/cost"] = point["correct"], point["cost"]
        arms[arm] = {"results": {k: f["results"][k] for k in SAVED_RESULTS if k in f["results"]},
                     "seconds": f["seconds"], "versus_thresholds": f["images"]["versus_thresholds"],
                     "matches_run": {n: p["matches_run"] for n, p in f["images"]["points"].items()}}
    np.savez_compressed(home / f"seed{seed}.npz", **arrays)
    (home / f"seed{seed}.json").write_text(json.dumps({"backbone": figures["backbone"], "arms": arms}) + "\n")


def load_seed(out: Path, seed: int) -> dict | None:
    """A seed's figures, every arm, as :func:`save_seed` kept them, or None when none are kept."""
    path = out / "seeds" / f"seed{seed}.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    arrays = np.load(out / "seeds" / f"seed{seed}.npz")
    figures = {"backbone": saved["backbone"], "arms": {}}
    for arm, a in saved["arms"].items():
        points = {n: {"correct": arrays[f"{arm}/{n}/correct"], "cost": arrays[f"{arm}/{n}/cost"], "matches_run": m}
                  for n, m in a["matches_run"].items()}
        figures["arms"][arm] = {"results": a["results"], "seconds": a["seconds"], "images": {
            "exits": arrays[f"{arm}/exits"], "points": points, "versus_thresholds": a["versus_thresholds"]}}
    return figures


def collect(setup: Setup, runs_dir: Path, out: Path, seeds: list[int], arms: list[str] | None) -> dict[int, dict]:
    """Each seed's figures: those kept under ``out/seeds/`` read back, and ``arms`` missing there run now
    (and kept); with ``arms`` None nothing runs and every kept arm is reported."""
    figures = {}
    for seed in seeds:
        saved = load_seed(out, seed)
        missing = [] if arms is None else [a for a in arms if saved is None or a not in saved["arms"]]
        home = backbone_dir(runs_dir, seed)
        if missing and saved is not None and not (home / "results.json").is_file():
            sys.exit(f"error: seed {seed}'s kept arms ({', '.join(saved['arms'])}) come from a backbone trained in "
                     f"{home}, which is not there, and a new one would not pair with them: restore that folder, or "
                     f"delete {out / 'seeds'}/seed{seed}.json and .npz to run the whole seed again")
        if missing:
            save_seed(out, seed, run_seed(setup, runs_dir, seed, missing), before=saved)
            saved = load_seed(out, seed)
        if saved is not None:
            wanted = saved["arms"] if arms is None else arms
            figures[seed] = {"backbone": saved["backbone"], "arms": {a: saved["arms"][a] for a in wanted}}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="digits, tiny epochs: check the machinery (~1 min)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                        help="the arms to run (where a seed's figures lack them) and report; A, the frozen "
                             "reference, always (default: A to F; G, E for the backbone's full epochs, is asked "
                             "for by name)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: report every arm kept for the seeds, each over the seeds that ran it")
    parser.add_argument("--runs", type=Path, help="where the runs go (default runs/joint_training[_smoke])")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/joint_training, or the runs folder "
                                                 "with --smoke")
    args = parser.parse_args()
    setup = SMOKE if args.smoke else FULL
    runs_dir = args.runs or Path("runs/joint_training" + ("_smoke" if args.smoke else ""))
    out = args.out or (runs_dir if args.smoke else Path("benchmarks/results/joint_training"))
    start = time.perf_counter()
    figures = collect(setup, runs_dir, out, args.seeds,
                      None if args.report else [arm for arm in ARMS if arm in {*args.arms, "A"}])
    if not figures:
        sys.exit(f"error: no figures kept under {out / 'seeds'} for seeds {args.seeds}: run without --report first")
    arms = [arm for arm in ARMS if any(arm in f["arms"] for f in figures.values())]
    seeds_of = {arm: [k for k, f in figures.items() if arm in f["arms"]] for arm in arms}
    per_arm = {arm: {k: figures[k]["arms"][arm]["results"] for k in seeds_of[arm]} for arm in arms}

    def summary_of(arm: str) -> dict:
        got = [figures[k]["arms"][arm] for k in seeds_of[arm]]
        frozen = [figures[k]["arms"]["A"]["results"]["exits"][-1]["accuracy"] for k in seeds_of[arm]]
        return {"mode": NAMES[arm], "seeds": seeds_of[arm], "frozen_final_exit": float(np.mean(frozen)),
                **arm_summary([g["results"] for g in got], [g["images"] for g in got], [g["seconds"] for g in got])}

    by_seed = {k: {arm: f["images"] for arm, f in figures[k]["arms"].items()} for k in figures}
    pairs = {f"{a} - {b}": paired(by_seed, a, b) for a, b in PAIRS if a in arms and b in arms}
    summary = {
        "question": "does fine-tuning the backbone with its exits (C: SDN ramp, D: gradient equilibrium, E: C "
                    "at a fifth of the backbone learning rate) beat the frozen network (A) and the backbone "
                    "fine-tuned alone at the same rate (B for C and D, F for E)?",
        "setup": {"dataset": setup.dataset, "backbone_epochs": setup.epochs, "finetune_epochs": setup.finetune_epochs(),
                  "calib_size": setup.calib_size, "head_epochs": setup.head_epochs, "seeds": sorted(figures),
                  "smoke": args.smoke, "bootstrap": BOOTSTRAP},
        "backbones": [figures[k]["backbone"] for k in sorted(figures)],
        "arms": {arm: summary_of(arm) for arm in arms},
        "paired": {name: rows for name, rows in pairs.items() if rows is not None},
        "frozen_backbone_test_accuracy": "arm A's final exit (the backbone every arm starts from)",
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": "python " + " ".join(sys.argv), "wall_seconds": time.perf_counter() - start},
    }
    summary["goals"] = goals(summary["arms"], summary["paired"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(per_arm, out / "tradeoff.png")
    for arm, row in summary["arms"].items():
        print(f"{arm} {row['mode']:27s} exits {' / '.join(f'{100 * a:.2f}' for a in row['exit_accuracy'])} %, "
              f"heads + fine-tune {row['training_seconds'][0]:.0f} s, seeds {row['seeds']}")
    (out / "summary.md").write_text(markdown(summary))
    for arm, row in summary["goals"].items():
        print(f"{arm} goals: " + "; ".join(f"{name}: {'met' if ok else 'not met'}" for name, (_, ok) in row.items()))
    print(f"wrote {out / 'study.json'} and {out / 'tradeoff.png'}")


if __name__ == "__main__":
    main()
