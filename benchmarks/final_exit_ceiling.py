"""How far can any combination of the exits lift the final exit above the frozen backbone?

The better-exits study's <= 75 % goal asks for 0.2 pt above the backbone, and the best final exit so far (a
linear ensemble of the 12-epoch deep heads and the backbone) is 0.10 pt above it. This study
asks whether a richer combiner of the same outputs, or more heads on the same features, would
close the gap. It reads the outputs cached by ``better_exits.py train`` (no training, about a
minute a head set on 2 threads):

    python benchmarks/final_exit_ceiling.py --heads deep --head-epochs 12 --seeds 0 1 2

Each combiner is fit on the calibration split and judged there **out of fold** first (two
halves, each scored by a fit on the other: how ``leenet.ensemble_for`` decides on the final
exit), then fit on all of calibration and scored on test:

- ``backbone``: the frozen backbone alone;
- ``linear ensemble``: the final exit of ``--ensemble linear`` (a weight per exit, biases per class);
- ``linear ensemble, all seeds' heads``: the same over the heads of every seed given at once,
  as if each exit carried several independently trained heads (their FLOPs all counted);
- ``stacking (λ)``: a multinomial logistic regression from every exit's log-probabilities
  (E·C inputs) added to the backbone's log-probabilities, with an L2 penalty λ on its weights
  and biases, so that a large λ gives the backbone back; λ is chosen out of fold on calibration;
- ``oracle``: right whenever any exit is right (what no combiner reaches).

The ``final exit cost`` column is the final exit's FLOPs as a share of the backbone's: the
backbone plus every head it reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import better_exits  # noqa: E402
from fashion_mnist import cached_backbone_stages  # noqa: E402

from leenet.nn.combine import ensemble_for, out_of_fold_accuracy  # noqa: E402
from leenet.policy.cache import CachedOutputs  # noqa: E402

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # stacking's L2 strengths, chosen among out of fold


def linear_final(raw: torch.Tensor, labels: torch.Tensor):
    """Predict function of the final exit of a linear ensemble fit on (raw, labels)."""
    ens = ensemble_for(raw, labels, "linear", final=True)
    return lambda x: ens.exit(x.shape[1] - 1, x).argmax(-1)


def stacking(raw: torch.Tensor, labels: torch.Tensor, lam: float, steps: int = 200):
    """Predict function of a logistic regression on every exit's log-probabilities, added to the
    backbone's log-probabilities, its weights and biases L2-penalised by ``lam`` (full-batch
    L-BFGS): a large ``lam`` answers as the backbone."""
    x = raw.float().log_softmax(-1)
    n, exits, classes = x.shape
    weight = torch.zeros(exits * classes, classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def logits(logp: torch.Tensor) -> torch.Tensor:
        return logp[:, -1] + logp.flatten(1) @ weight + bias

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits(x), labels) + lam * (weight.square().sum() + bias.square().sum())
        loss.backward()
        return loss

    optimizer.step(closure)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    return lambda r: logits(r.float().log_softmax(-1)).argmax(-1)


def judged(fit, calib, test, seed: int) -> tuple[float, float]:
    """(calibration accuracy out of fold, test accuracy) of the combiner ``fit(raw, labels)``."""
    predict = fit(calib.logits, calib.labels)
    return (out_of_fold_accuracy(fit, calib.logits, calib.labels, seed),
            float((predict(test.logits) == test.labels).float().mean()))


def study(stages, splits, heads: str, seeds: list[int]) -> list[tuple[str, float, float, float]]:
    """Rows (name, final exit cost, calibration out of fold, test), averaged over ``seeds``."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    every = []  # each seed's net and outputs, for the all-seeds ensemble
    for seed in seeds:
        net, saved = better_exits.trained(stages, splits, heads, seed)
        calib, test = saved["calib"], saved["test"]
        every.append((net, calib, test))
        ensembled = 1.0 + float(net.head_cost.sum())
        backbone = (float(calib.correct[:, -1].float().mean()), float(test.correct[:, -1].float().mean()))
        rows.setdefault("backbone", []).append((1.0, *backbone))
        rows.setdefault("linear ensemble", []).append(
            (ensembled, *judged(linear_final, calib, test, seed)))
        scored = {lam: judged(lambda r, y, lam=lam: stacking(r, y, lam), calib, test, seed) for lam in LAMBDAS}
        for lam, (c, t) in scored.items():
            rows.setdefault(f"stacking (λ = {lam:g})", []).append((ensembled, c, t))
        best = max(LAMBDAS, key=lambda lam: scored[lam][0])
        rows.setdefault("stacking, λ chosen out of fold", []).append((ensembled, *scored[best]))
        rows.setdefault("oracle (any exit right)", []).append(  # no cost: it is not a network
            (float("nan"), float(calib.correct.any(1).float().mean()), float(test.correct.any(1).float().mean())))
    if len(every) > 1:
        # every seed's early heads side by side as exits, then the backbone (the same in every seed)
        def stack_heads(outs):
            return torch.cat([o.logits[:, :-1] for o in outs] + [outs[0].logits[:, -1:]], dim=1)

        calib = CachedOutputs(stack_heads([c for _, c, _ in every]), [], every[0][1].labels)
        test = CachedOutputs(stack_heads([t for _, _, t in every]), [], every[0][2].labels)
        cost = 1.0 + sum(float(net.head_cost.sum()) for net, _, _ in every)
        rows[f"linear ensemble, {len(every)} seeds' heads"] = [(cost, *judged(linear_final, calib, test, seeds[0]))]
    return [(name, *np.mean(np.array(v), axis=0)) for name, v in rows.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="deep", choices=list(better_exits.HEADS),
                        help="a head set that better_exits.py has trained and cached (default: %(default)s)")
    parser.add_argument("--head-epochs", type=int, default=better_exits.DEFAULT_HEAD_EPOCHS,
                        help="its head epochs (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbone", type=Path, default=better_exits.BACKBONE, help="default: %(default)s")
    args = parser.parse_args()
    better_exits.BACKBONE, better_exits.HEAD_EPOCHS = args.backbone, args.head_epochs
    missing = [s for s in args.seeds if not better_exits.cache_path(args.heads, s).exists()]
    if missing:
        sys.exit(f"error: no cached heads for '{args.heads}' at {args.head_epochs} epochs, seeds {missing}: run "
                 f"python benchmarks/better_exits.py train --heads {args.heads} --head-epochs {args.head_epochs} "
                 f"--seeds {' '.join(map(str, missing))}")
    splits, stages = cached_backbone_stages(args.backbone)
    rows = study(stages, splits, args.heads, args.seeds)
    print(f"{args.heads}, {args.head_epochs} epochs, seeds {args.seeds} (mean over seeds):\n")
    print("| final exit | final exit cost | calibration, out of fold (%) | test (%) |")
    print("|---|---|---|---|")
    for name, cost, calib, test in rows:
        print(f"| {name} | {'–' if np.isnan(cost) else f'{cost:.3f}'} | {100 * calib:.2f} | {100 * test:.2f} |")


if __name__ == "__main__":
    main()
