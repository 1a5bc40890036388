"""Where the learned gates trail the thresholds at the cheapest budgets: on calibration too, or
only on test? One seed of one better-exits head set (cached by ``benchmarks/better_exits.py``):
the best accuracy each family reaches at or under a few costs near the first exit's, on both
splits (the learned policy: its alpha x threshold family; the thresholds: max-softmax and entropy).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/low_cost_gap.py --heads deep --seed 0   # ~1 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from better_exits import BACKBONE, HEADS, METHOD, METHODS, trained  # noqa: E402
from fashion_mnist import cached_backbone_stages, points, run_seed  # noqa: E402

from leenet.evaluate import envelope_at, upper_envelope  # noqa: E402

COSTS = (0.23, 0.235, 0.24, 0.245, 0.25, 0.26, 0.28, 0.30, 0.35)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", choices=list(HEADS), default="deep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits, stages = cached_backbone_stages(BACKBONE)
    net, saved = trained(stages, splits, args.heads, args.seed)
    run = run_seed(net, saved["calib"], saved["test"], saved["train"], args.seed, {METHOD: METHODS[METHOD]},
                   None, budget_curve_methods=())
    family = run["methods"][METHOD]["family"]
    thresholds = run["baselines"]["max_softmax"] + run["baselines"]["entropy"]
    print("| cost at most | calibration: learned | calibration: thresholds | test: learned | test: thresholds |")
    print("|---|---|---|---|---|")
    # each family's best accuracy at or under each cost, on each split
    columns = [envelope_at(upper_envelope(points(c, split)), COSTS) for split in ("calib", "test")
               for c in (family, thresholds)]
    for cost, *row in zip(COSTS, *columns):
        print(f"| {cost} | " + " | ".join(f"{100 * v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
