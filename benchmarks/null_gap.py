"""How far below an equivalent method does a method's envelope dip? A yardstick for target (b).

Target (b) of the Fashion-MNIST benchmark asks LEENet's test envelope to reach the best threshold baseline's at
*every* cost. This script measures that statistic where no method is better than the other:
the same threshold baseline on the heads of another training seed (the three SDN head seeds
that ``benchmarks/fashion_mnist.py --head sdn`` trained and cached), and max-softmax against
entropy on the same heads. For every ordered pair it reports the area between the envelopes
and the worst point, with the paired standard error there: if reruns of one method fall
short of each other by as much as LEENet falls short of thresholds, "at every cost" is
a bar that no method meets against itself on a test set of this size.

Usage::

    python benchmarks/null_gap.py --out benchmarks/results/null_gap_sdn.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import fashion_mnist as fm

from leenet.evaluate import Evaluator
from leenet.policy import confidence_scores, threshold_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    splits, stages = fm.cached_backbone_stages(args.backbone)
    families, lo = {}, 0.0
    for seed in args.seeds:
        net, calib, test, _ = fm.trained_exits(stages, list(fm.EXITS), None, splits, seed, "sdn", 6,
                                               fm.head_cache_path(args.backbone, seed))
        ev = Evaluator.of(net, calib, test)
        for kind in ("max_softmax", "entropy"):
            grid = threshold_grid(confidence_scores(calib.logits, kind))
            families[(kind, seed)] = fm.confidence_family(ev, kind, grid)
        families[("best threshold", seed)] = families[("max_softmax", seed)] + families[("entropy", seed)]
        lo = max(lo, float(net.cost[0]))
    pairs = [((k, a), (k, b)) for k in ("max_softmax", "best threshold") for a, b in itertools.permutations(args.seeds, 2)]
    pairs += [(("max_softmax", s), ("entropy", s)) for s in args.seeds]
    pairs += [(("entropy", s), ("max_softmax", s)) for s in args.seeds]
    rows = []
    for method, baseline in pairs:
        gap = fm.test_gap(families[method], families[baseline], lo)
        rows.append({"method": f"{method[0]} seed {method[1]}", "against": f"{baseline[0]} seed {baseline[1]}",
                     "area_pt_cost": 100 * gap["area"], "worst_gap_pt": 100 * gap["worst_gap"],
                     "worst_cost": gap["worst_cost"], "worst_stderr_pt": 100 * gap["worst_stderr"]})
        r = rows[-1]
        print(f"{r['method']:>24s} vs {r['against']:<24s} area {r['area_pt_cost']:+.3f} pt·cost, worst "
              f"{r['worst_gap_pt']:+.2f} pt at {r['worst_cost']:.3f} (paired SE {r['worst_stderr_pt']:.2f})")
    result = {"lo": lo, "seeds": args.seeds, "rows": rows, "seconds": time.perf_counter() - start}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
