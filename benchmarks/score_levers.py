"""Which gate score solves budgets best? (target (b): levers that did and did not help).

Behind the SDN heads of ``benchmarks/fashion_mnist.py --head sdn`` (reused from its per-seed
cache, so run that first), solves a budget every ``--step`` of cost (0.005) on the calibration split
with :func:`leenet.policy.budget_thresholds` for several per-gate scores, routes the test
split by the same thresholds, and compares each envelope with the better of the max-softmax
and entropy baselines (area, worst point, its paired standard error, most significant loss):

* ``correct``: the default, P(this exit is right) learned on the training split from
  confidence, history and class probabilities (``predict-error train classes``);
* ``correct, no tie slack``: the same with ``BUDGET_TIE = 0`` (the least calibration loss
  wins outright, as before the tie rule);
* ``bag3`` / ``bag5``: the mean logit of 3 / 5 such predictors fit with other seeds;
* ``gain vs final`` / ``gain vs any later`` (β = 1 or 0.5): P(right here) − β·P(the final
  exit / some later exit is right), the second predicted from this exit's gate inputs on the
  calibration split (out of fold): exit where going on is not expected to help, even when
  this exit is unsure (a hopeless sample should leave early).

Usage::

    python benchmarks/score_levers.py --out benchmarks/results/score_levers_sdn.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fashion_mnist as fm
import numpy as np
import torch

from leenet.config import GateTrainConfig
from leenet.evaluate import Evaluator, envelope_gap
from leenet.nn import CostModel, make_gates
from leenet.policy import (
    BUDGET_TIE,
    GateProblem,
    budget_thresholds,
    confidence_scores,
    exit_losses,
    first_exit,
    fit_predictors,
    fold_splits,
    fresh_gates,
    gate_logits,
    predictor_fit,
    summarize,
    threshold_grid,
)


def _fit(net, inputs, target, config, seed):
    gates = fresh_gates(GateProblem.of(net), inputs, seed)
    fit_predictors(gates, inputs, target, config)
    return gates.eval()


@torch.no_grad()
def _logits(gates, inputs):
    return gate_logits(gates, inputs)


def later_scores(net, calib, test, target, seed, config):
    """Logits of P(``target``) from each gate's inputs: out of fold on calibration, full fit on test."""
    inputs, test_inputs = calib.gate_inputs(net.gate_config), test.gate_inputs(net.gate_config)
    held = torch.empty_like(target)
    for k, (fit, out) in enumerate(fold_splits(len(target), 2, seed)):
        gates = _fit(net, [x[fit] for x in inputs], target[fit], config, seed + 1 + k)
        held[out] = _logits(gates, [x[out] for x in inputs])
    return held, _logits(_fit(net, inputs, target, config, seed), test_inputs)


def gain(here, later, beta):
    """A logit-scale score of P(right here) − β·P(right later) (higher = exit)."""
    diff = (1 + torch.sigmoid(here) - beta * torch.sigmoid(later)) / 2
    return torch.logit(diff.clamp(1e-6, 1 - 1e-6))


def budget_envelope(net, calib, test, s_calib, s_test, baseline, tie, step):
    """Solve a budget every ``step`` of cost on calibration, route test by the same thresholds, compare."""
    costs = CostModel.of(net)
    losses = exit_losses(calib.logits, calib.labels, "error")
    points, outcomes = [], []
    for budget in np.arange(float(net.cost[0]), 1.0 + 1e-9, step):
        found = budget_thresholds(s_calib, losses, costs, float(budget), tie=tie)
        if found is None:
            continue
        leave = (s_test >= found.values) & found.enabled
        result = summarize(first_exit(leave), test.correct, costs.routed(found.enabled))
        points.append((result.cost, result.accuracy))
        outcomes.append(result.outcomes.numpy())
    base_out = np.stack([c.test.outcomes.numpy() for c in baseline])
    gap = envelope_gap(points, fm.points(baseline), float(net.cost[0]), 1.0, fm.GAP_TOL,
                       outcomes=(np.stack(outcomes), base_out))
    return {**gap, "top_accuracy": max(a for _, a in points)}


def run_seed(stages, splits, backbone_path: Path, seed: int, step: float) -> dict:
    net, calib, test, train = fm.trained_exits(stages, list(fm.EXITS), None, splits, seed, "sdn", 6,
                                               fm.head_cache_path(backbone_path, seed))
    ev = Evaluator.of(net, calib, test)
    baseline = []
    for kind in ("max_softmax", "entropy"):
        baseline += fm.confidence_family(ev, kind, threshold_grid(confidence_scores(calib.logits, kind)))
    gate_config, config = fm.METHODS["predict-error train classes"]
    net.gate_config = gate_config
    net.gates = make_gates(net.num_exits - 1, [p.shape[1] for p in calib.pooled], gate_config, calib.logits.shape[-1])
    test_inputs = test.gate_inputs(gate_config)
    calib_scores, test_scores = [], []
    for k in range(5):  # the default predictor (k = 0) and four more seeds for bagging
        predictors, scores = predictor_fit(net, calib, config, seed=seed + 100 * k, fit_on=train)
        calib_scores.append(scores)
        test_scores.append(_logits(predictors, test_inputs))
    variants = {"correct": (calib_scores[0], test_scores[0], BUDGET_TIE),
                "correct, no tie slack": (calib_scores[0], test_scores[0], 0.0)}
    for n in (3, 5):
        variants[f"bag{n}"] = (torch.stack(calib_scores[:n]).mean(0), torch.stack(test_scores[:n]).mean(0),
                               BUDGET_TIE)
    correct = calib.correct.float()
    targets = {"final": correct[:, -1:].expand(-1, net.num_exits - 1).contiguous(),
               "any later": torch.stack([correct[:, i + 1:].amax(1) for i in range(net.num_exits - 1)], 1)}
    calib_config = GateTrainConfig(objective="predict", loss="error")
    for name, target in targets.items():
        later_calib, later_test = later_scores(net, calib, test, target, seed, calib_config)
        for beta in (1.0, 0.5):
            variants[f"gain vs {name}, beta {beta:g}"] = (gain(calib_scores[0], later_calib, beta),
                                                          gain(test_scores[0], later_test, beta),
                                                          BUDGET_TIE)
    rows = []
    for name, (s_calib, s_test, tie) in variants.items():
        gap = budget_envelope(net, calib, test, s_calib, s_test, baseline, tie, step)
        rows.append({"seed": seed, "score": name, **gap})
        print(f"seed {seed} {name:28s} area {100 * gap['area']:+.3f} worst {100 * gap['worst_gap']:+.2f} pt "
              f"@ {gap['worst_cost']:.3f} (SE {100 * gap['worst_stderr']:.2f}) min z {gap['min_z']:+.2f} "
              f"top {100 * gap['top_accuracy']:.2f} %", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step", type=float, default=0.005,
                        help="budget spacing (the comparison between scores; the main benchmark uses 0.001)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    splits, stages = fm.cached_backbone_stages(args.backbone)
    rows = [row for seed in args.seeds for row in run_seed(stages, splits, args.backbone, seed, args.step)]
    summary = {}
    for name in dict.fromkeys(r["score"] for r in rows):
        mine = [r for r in rows if r["score"] == name]
        summary[name] = {key: fm.mean_std([r[key] for r in mine])
                         for key in ("area", "worst_gap", "worst_stderr", "min_z", "top_accuracy")}
    result = {"seeds": args.seeds, "step": args.step, "rows": rows, "summary": summary,
              "seconds": time.perf_counter() - start}
    for name, s in summary.items():
        print(f"{name:28s} " + "  ".join(f"{k} {m:+.4f} ± {sd:.4f}" for k, (m, sd) in s.items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
