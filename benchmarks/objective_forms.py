"""Which gate objective should be the default? Measure every form on the same cached exits.

Trains a backbone and heads once (or reuses a backbone file), caches every exit's outputs on
the calibration and test splits, then fits gates over a 21-alpha sweep with each objective
form (soft/hard × ce/error), for several gate seeds. Reports on test:

* ``auc``: mean test accuracy of the LEENet curve's upper envelope over costs from the first
  exit's cost to 1.0 (higher is better; the same number for max-softmax thresholds is printed
  as the reference),
* ``acc@a=0``: accuracy at alpha = 0 (should equal the backbone's),
* ``max_jump``: largest change in mean cost between neighbouring alphas (collapse detector).

Usage::

    python benchmarks/objective_forms.py --dataset digits --out benchmarks/results/objective_forms_digits.json
    python benchmarks/objective_forms.py --dataset digits --gate-pooled \
        --out benchmarks/results/objective_forms_digits_pooled.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from leenet import backbones as zoo
from leenet import data
from leenet.config import GateConfig, GateTrainConfig
from leenet.defaults import DATASET_DEFAULTS
from leenet.evaluate import Evaluator
from leenet.nn import attach_exits
from leenet.policy import collect_outputs, train_gates
from leenet.train import freeze_, train_classifier, train_heads

FORMS = [("soft", "ce"), ("soft", "error"), ("hard", "ce"), ("hard", "error"), ("predict", "ce"), ("predict", "error")]
ALPHAS = [round(0.05 * k, 2) for k in range(21)]


def envelope_auc(points: list[tuple[float, float]], lo: float, hi: float, grid: int = 400) -> float:
    """Mean over costs in [lo, hi] of the best accuracy reachable at that cost or less."""
    pts = sorted(points)
    costs = np.array([c for c, _ in pts])
    best = np.maximum.accumulate(np.array([a for _, a in pts]))
    xs = np.linspace(lo, hi, grid)
    idx = np.searchsorted(costs, xs, side="right") - 1
    return float(np.where(idx >= 0, best[np.clip(idx, 0, None)], 0.0).mean())


def build(dataset: str, weights: str | None, seed: int, gate_config: GateConfig):
    defaults = DATASET_DEFAULTS[dataset]
    splits = data.load_dataset(dataset, seed=seed)
    spec = splits.spec
    backbone = zoo.build_backbone(defaults.arch, num_classes=spec.num_classes,
                                  in_channels=spec.in_channels, weights=weights)
    loader = data.make_loader(splits.train, 64, train=True, seed=seed)
    if weights is None:
        train_classifier(backbone, lambda: iter(loader), steps_per_epoch=len(loader),
                         epochs=defaults.epochs, progress=False)
    freeze_(backbone)
    net = attach_exits(backbone, zoo.get_backbone_info(defaults.arch).default_exits,
                       input_shape=(spec.in_channels, spec.image_size, spec.image_size),
                       num_classes=spec.num_classes, head=defaults.head, gate_config=gate_config)
    train_heads(net, lambda: iter(loader), steps_per_epoch=len(loader), epochs=defaults.head_epochs,
                progress=False)
    caches = [collect_outputs(net, data.make_loader(ds, 256, train=False), progress=False)
              for ds in (splits.calib, splits.test)]
    return net, *caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--weights", help="backbone file to reuse instead of training one")
    parser.add_argument("--seeds", type=int, default=3, help="gate-training seeds per form")
    parser.add_argument("--gate-pooled", action="store_true", help="gates also see pooled features")
    parser.add_argument("--no-gate-history", action="store_true", help="gates see only their own exit")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    gate_config = GateConfig(pooled=args.gate_pooled, history=not args.no_gate_history)
    net, calib, test = build(args.dataset, args.weights, seed=0, gate_config=gate_config)
    ev = Evaluator.of(net, calib, test)
    lo, hi = float(net.cost[0]), 1.0
    baseline = {k: envelope_auc([(c.test.cost, c.test.accuracy) for c in ev.confidence(k)], lo, hi)
                for k in ("max_softmax", "entropy")}
    backbone_acc = float(test.correct[:, -1].float().mean())
    rows = []
    for objective, loss in FORMS:
        config = GateTrainConfig(objective=objective, loss=loss)
        aucs, acc0, jumps = [], [], []
        for seed in range(args.seeds):
            curve = [ev.leenet(a, train_gates(net, calib, a, config, seed=seed), net.gate_config)[0].test
                     for a in ALPHAS]
            aucs.append(envelope_auc([(r.cost, r.accuracy) for r in curve], lo, hi))
            acc0.append(curve[0].accuracy)
            jumps.append(max(abs(b.cost - a.cost) for a, b in zip(curve, curve[1:])))
        rows.append({"objective": objective, "loss": loss, "auc": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
                     "acc_alpha0": float(np.mean(acc0)), "max_jump": float(np.max(jumps))})
    report = {"dataset": args.dataset, "gate": vars(gate_config), "backbone_accuracy": backbone_acc,
              "baseline_auc": baseline,
              "forms": rows, "seconds": round(time.time() - start, 1)}
    print(f"backbone {backbone_acc:.2%}; max-softmax auc {baseline['max_softmax']:.4f}, "
          f"entropy auc {baseline['entropy']:.4f}")
    print(f"{'objective':10s}{'loss':7s}{'auc':>16s}{'acc@a=0':>10s}{'max_jump':>10s}")
    for r in rows:
        print(f"{r['objective']:10s}{r['loss']:7s}{r['auc']:10.4f}±{r['auc_std']:.4f}"
              f"{r['acc_alpha0']:10.2%}{r['max_jump']:10.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
