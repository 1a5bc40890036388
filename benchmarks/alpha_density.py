"""Does the learned policy's gap to thresholds close with more alphas?

Reuses the SDN heads of seed 0 that ``benchmarks/fashion_mnist.py --head sdn`` trained and
cached (or trains and caches them the same way), then fits ``predict-error`` gates (range units)
on sweeps of 21, 41 and 81 evenly spaced alphas and compares each α-curve's upper envelope with
the best threshold baseline's on the test split. Usage::

    python benchmarks/alpha_density.py --out benchmarks/results/alpha_density_sdn.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fashion_mnist as fm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", type=int, nargs="+", default=[21, 41, 81])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    splits, stages = fm.cached_backbone_stages(args.backbone)
    net, calib, test, train = fm.trained_exits(stages, list(fm.EXITS), None, splits, args.seed, "sdn", 6,
                                               fm.head_cache_path(args.backbone, args.seed))
    rows = []
    for count in args.counts:
        alphas = tuple(round(k / (count - 1), 4) for k in range(count))
        out = fm.run_seed(net, calib, test, train, args.seed, {"predict-error": fm.METHODS["predict-error"]}, None,
                          alphas=alphas, budget_curve_methods=())
        m = out["methods"]["predict-error"]["metrics"]
        rows.append({"alphas": count, "area": m["gap"]["area"], "worst_gap": m["gap"]["worst_gap"],
                     "worst_cost": m["gap"]["worst_cost"], "family_area": m["family_gap"]["area"],
                     "family_worst_gap": m["family_gap"]["worst_gap"], "max_jump": m["max_jump"],
                     "cost_at_0.5pt": m["cost_at_0.5pt"]})
    result = {"seed": args.seed, "rows": rows, "seconds": time.perf_counter() - start}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
