"""Which refit should an int8 export make: one threshold or one per exit, the saved alpha re-solved or the cost held?

On a finished run and its int8 export, every exit's outputs are collected through the float32
and the int8 graphs (calibration and test splits), and four refits are chosen on calibration
with the library's one threshold search (:mod:`leenet.policy.thresholds`): a threshold shared
by every gate (``rounds=0``) or one per gate (coordinate descent), for the run's saved alpha
(its cost weight from results.json) or for the float32 policy's calibration cost as a budget.
Each is also applied to the float32 outputs as a control: what the search moves without
quantization. The figures are routed on the all-exit outputs exactly as the runtime routes.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/int8_refit_forms.py --run /work/runs/fmnist \\
        --int8-export /work/runs/fmnist-int8 --out benchmarks/results/int8_refit_forms.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from leenet.export import SavedPolicy, export_onnx, run_splits, split_arrays
from leenet.export.quantize import exit_outputs
from leenet.export.refit import gate_scores, policy_figures, route
from leenet.nn.cost import CostModel
from leenet.policy.objective import exit_losses
from leenet.policy.simulate import first_exit
from leenet.policy.thresholds import Thresholds, alpha_thresholds, budget_thresholds
from leenet.report.results import read_results
from leenet_runtime import ExitRunner


def search(outputs, labels, costs, loss: str, rounds: int, raw_alpha: float | None, max_cost: float | None) -> Thresholds:
    logits, exit_prob = outputs
    scores, gates = gate_scores(exit_prob), exit_prob.shape[1]
    losses = exit_losses(torch.from_numpy(np.nan_to_num(logits)), torch.from_numpy(labels), loss)
    model = CostModel(torch.tensor(costs, dtype=torch.float32), torch.zeros(gates), torch.zeros(gates))
    if max_cost is None:
        return alpha_thresholds(scores, losses, model, raw_alpha, rounds=rounds)
    return budget_thresholds(scores, losses, model, max_cost, rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="/work/runs/fmnist")
    parser.add_argument("--int8-export", required=True)
    parser.add_argument("--out", default="benchmarks/results/int8_refit_forms.json")
    args = parser.parse_args()
    run = Path(args.run)
    results = read_results(run / "results.json")
    policy = SavedPolicy.of_results(results)
    raw_alpha = float(results.raw_alphas[repr(policy.alpha)])
    splits = run_splits(run)
    data = {"calibration": split_arrays(splits.calib), "test": split_arrays(splits.test)}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(run, Path(tmp) / "float32")
        runners = {"float32": ExitRunner(Path(tmp) / "float32", threads=torch.get_num_threads()),
                   "int8": ExitRunner(args.int8_export, threads=torch.get_num_threads())}
        outs = {(k, split): exit_outputs(r, x) for k, r in runners.items() for split, (x, _) in data.items()}
    costs = runners["float32"].costs.tolist()
    saved = {split: route(outs["float32", split][1], policy.threshold) for split in data}
    spent = float(np.asarray(costs)[saved["calibration"]].mean())

    def figures(kind: str, exits: dict) -> dict:
        out = {}
        for split, (_, labels) in data.items():
            f = policy_figures(outs[kind, split][0], exits[split], labels, costs, float("nan"))
            out[split] = {"accuracy": f.accuracy, "cost": f.cost, "same_exit": float((exits[split] == saved[split]).mean())}
        return out

    rows = {"float32 at the saved threshold": figures("float32", saved),
            "int8 at the saved threshold (no refit)": figures(
                "int8", {s: route(outs["int8", s][1], policy.threshold) for s in data})}
    for form, rounds in (("shared threshold", 0), ("per-exit thresholds", 3)):
        for aim, alpha, budget in (("saved alpha re-solved", raw_alpha, None), ("float32 cost held", None, spent)):
            for kind in ("int8", "float32"):
                found = search(outs[kind, "calibration"], data["calibration"][1], costs, policy.loss, rounds, alpha, budget)
                exits = {s: first_exit((gate_scores(outs[kind, s][1]) >= found.values) & found.enabled).numpy()
                         for s in data}
                rows[f"{form}, {aim}, on {kind} outputs"] = figures(kind, exits)
    for name, row in rows.items():
        print(f"{name:62s} " + "  ".join(f"{split} {v['accuracy']:.2%} at {v['cost']:.4f}, same exit {v['same_exit']:.2%}"
                                        for split, v in row.items()))
    out = {"question": __doc__.split("\n\n")[0], "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python benchmarks/int8_refit_forms.py "
           f"--run {args.run} --int8-export {args.int8_export}", "policy": policy.describe(), "raw_alpha": raw_alpha,
           "float32_calibration_cost": spent, "rows": rows,
           "note": "the library's refit (leenet.export.refit) is the shared threshold holding the float32 cost, and "
                   "keeps the saved threshold where it ties; the rows here are the searches alone"}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
