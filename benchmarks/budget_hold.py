"""How often does a budget chosen on calibration hold on test, and what does its slack cost?

Budget mode (``leenet run --target-cost C`` / ``--max-drop D``) picks, among every (alpha,
decision threshold) setting, the best one that meets the budget on the calibration split with
``margin`` standard errors to spare (:func:`leenet.evaluate.best_within_cost`,
:func:`leenet.evaluate.cheapest_within_drop`). This script measures, on Fashion-MNIST, behind
the SDN heads of ``benchmarks/fashion_mnist.py --head sdn`` (reused from its per-seed cache, so
run that first) and behind pooled-linear heads (trained in seconds on the cached pooled
features), with the benchmark's reported gates (``predict-error train classes``):

* for cost budgets from 0.30 to 0.95 and accuracy budgets from 0.25 to 2 points, for each
  margin, how many held on the test split;
* what the slack costs: mean test accuracy at the cost budgets and mean test cost at the
  accuracy budgets.

Usage::

    python benchmarks/budget_hold.py --out benchmarks/results/budget_hold.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import fashion_mnist as fm
import numpy as np
import torch

from leenet.evaluate import DECISION_THRESHOLDS, Evaluator, best_within_cost, cheapest_within_drop, held_on_test
from leenet.nn import make_gates
from leenet.policy import fit_gate_sweep

METHOD = "predict-error train classes"
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
COSTS = tuple(round(0.30 + 0.05 * k, 2) for k in range(14))  # 0.30 … 0.95 of the backbone's FLOPs
DROPS = tuple(round(0.0025 * k, 4) for k in range(1, 9))  # 0.25 … 2 accuracy points


def family(net, calib, test, train, seed: int):
    """Every (alpha, threshold) candidate of the reported gate method, and the Evaluator."""
    gate_config, train_config = fm.METHODS[METHOD]
    net.gate_config = gate_config
    net.gates = make_gates(net.num_exits - 1, [p.shape[1] for p in calib.pooled], gate_config, calib.logits.shape[-1])
    fits = fit_gate_sweep(net, calib, fm.ALPHAS, train_config, seed=seed, fit_on=train)
    ev = Evaluator.of(net, calib, test)
    return [c for alpha, fit in fits.items()
            for c in ev.leenet(alpha, fit.gates, gate_config, DECISION_THRESHOLDS, fit.calib_probs)], ev


def cases(candidates, ev) -> list[dict]:
    """One row per (margin, budget): what was chosen on calibration and how it did on test."""
    singles = ev.single_exits()
    ref_c, ref_t = singles[-1].calib.accuracy, singles[-1].test.accuracy
    rows = []
    for margin in MARGINS:
        for kind, targets in (("target_cost", COSTS), ("max_drop", DROPS)):
            for target in targets:
                if kind == "target_cost":
                    chosen = best_within_cost(candidates, target, margin=margin)
                else:
                    chosen = cheapest_within_drop(candidates, ref_c, target, margin=margin)
                row = {"margin": margin, "kind": kind, "target": target, "reachable": chosen is not None}
                if chosen is not None:
                    held = (held_on_test(chosen, max_cost=target) if kind == "target_cost"
                            else held_on_test(chosen, max_drop=target, test_reference=ref_t))
                    row.update(held=bool(held), test_accuracy=chosen.test.accuracy, test_cost=chosen.test.cost,
                               test_drop=ref_t - chosen.test.accuracy, calib_cost=chosen.calib.cost,
                               calib_drop=ref_c - chosen.calib.accuracy)
                rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per head, margin and budget kind: how many held, and the mean price over budgets and seeds."""
    out = []
    keys = sorted({(r["head"], r["margin"], r["kind"]) for r in rows})
    for head, margin, kind in keys:
        group = [r for r in rows if (r["head"], r["margin"], r["kind"]) == (head, margin, kind) and r["reachable"]]
        price = "test_accuracy" if kind == "target_cost" else "test_cost"
        misses = [r["test_cost"] - r["target"] if kind == "target_cost" else r["test_drop"] - r["target"]
                  for r in group if not r["held"]]
        out.append({"head": head, "margin": margin, "kind": kind, "cases": len(group),
                    "held": sum(r["held"] for r in group), price: float(np.mean([r[price] for r in group])),
                    "worst_miss": max(misses, default=0.0)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heads", nargs="+", choices=("sdn", "pool"), default=["sdn", "pool"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    splits, stages = fm.cached_backbone_stages(args.backbone)
    feats = None
    if "pool" in args.heads:
        feature_path = fm.feature_cache_path(args.backbone)
        if feature_path.exists():
            feats = torch.load(feature_path, weights_only=False)
        else:
            feats = {k: fm.pooled_features(stages, getattr(splits, k)) for k in ("train", "calib", "test")}
    rows = []
    for head in args.heads:
        for seed in args.seeds:
            cache = None if head == "pool" else fm.head_cache_path(args.backbone, seed)
            net, calib, test, train = fm.trained_exits(stages, list(fm.EXITS), feats, splits, seed, head,
                                                       6 if head == "sdn" else 15, cache)
            candidates, ev = family(net, calib, test, train, seed)
            rows += [{"head": head, "seed": seed, **row} for row in cases(candidates, ev)]
            print(f"{head} seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)
    result = {
        "method": METHOD, "margins": list(MARGINS), "costs": list(COSTS), "drops": list(DROPS),
        "summary": summary(rows), "cases": rows, "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": "python " + " ".join(sys.argv)},
    }
    for s in result["summary"]:
        price = f"acc {s['test_accuracy']:.2%}" if "test_accuracy" in s else f"cost {s['test_cost']:.3f}"
        print(f"{s['head']:4s} margin {s['margin']:.1f} {s['kind']:11s} held {s['held']:3d}/{s['cases']:3d} "
              f"{price} worst miss {s['worst_miss']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
