"""Does the int8 promise hold on more than one trained network? `leenet export --int8` on several seeds.

For each seed, a Fashion-MNIST ``leenet run`` (default deep heads; by default the quick recipe,
``--epochs 2 --head-epochs 2``, so that three seeds fit in under an hour on two CPU cores) is
exported in int8 with the export's defaults; its ``quantization.json`` gives, on test, the int8
LEENet at the run's saved setting with the refit policy against the float32 backbone, the
policy before and after the refit against float32, and the share of images that take the same
exit. ``--run-dir`` adds finished runs trained another way (e.g. a full 24-epoch recipe), reported
beside the seeds. Nothing is chosen on test: the export's refit reads calibration only.

Usage (from the repository root; a finished run or export is reused)::

    OMP_NUM_THREADS=2 python benchmarks/int8_seeds.py --seeds 0 1 2 \\
        --run-dir runs/joint_training/seed0/A --out benchmarks/results/int8_seeds.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from int8_speed import cpu_info

from leenet import DataConfig, RunConfig, TrainConfig, run
from leenet.export import export_int8, read_report

GOALS = {"int8 LEENet within 0.5 pt of the float32 backbone": 0.005, "refit within 0.2 pt of the float32 policy": 0.002,
         "refit within 0.02 of the float32 policy's cost": 0.02, "same exit at least": 0.98}


def trained(out: Path, seed: int, epochs: int, head_epochs: int) -> Path:
    """The run of ``seed`` in ``out``, trained now unless it finished before."""
    if not (out / "results.json").is_file():
        print(f"seed {seed}: training {out} ({epochs} backbone epochs, {head_epochs} head epochs)", flush=True)
        run(RunConfig(data=DataConfig(dataset="fashion-mnist"), train=TrainConfig(epochs=epochs, head_epochs=head_epochs),
                      seed=seed, out=str(out), timing=False, progress=False, overwrite=True))
    return out


def row(name: str, run_dir: Path, export_dir: Path) -> dict:
    """One network's figures on test: its int8 export (made now unless it exists) against float32."""
    if not (export_dir / "quantization.json").is_file():
        print(f"{name}: exporting {run_dir} in int8 to {export_dir}", flush=True)
        export_int8(run_dir, export_dir)
    results = json.loads((run_dir / "results.json").read_text())
    test = read_report(export_dir).test
    backbone = results["backbone"]["accuracy"]
    after, before, fp32 = test.int8_after_refit, test.int8_before_refit, test.float32
    figures = {
        "network": name, "run": str(run_dir), "export": str(export_dir), "seed": results.get("config", {}).get("seed"),
        "backbone_fp32_accuracy": backbone, "policy": read_report(export_dir).policy,
        "float32": vars(fp32), "int8_before_refit": vars(before), "int8_after_refit": vars(after),
        "same_exit": test.same_exit, "same_exit_before_refit": test.same_exit_before_refit,
        "int8_minus_backbone_pt": 100 * (after.accuracy - backbone),
        "refit_minus_float32_pt": 100 * (after.accuracy - fp32.accuracy), "refit_cost_change": after.cost - fp32.cost,
        "before_minus_float32_pt": 100 * (before.accuracy - fp32.accuracy), "before_cost_change": before.cost - fp32.cost,
    }
    figures["goals_met"] = {
        "int8 LEENet within 0.5 pt of the float32 backbone": after.accuracy >= backbone - 0.005,
        "refit within 0.2 pt of the float32 policy": abs(after.accuracy - fp32.accuracy) <= 0.002,
        "refit within 0.02 of the float32 policy's cost": abs(after.cost - fp32.cost) <= 0.02,
        "same exit at least": test.same_exit >= 0.98,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="backbone epochs of each seed's run (default: %(default)s)")
    parser.add_argument("--head-epochs", type=int, default=2, help="head epochs of each seed's run (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/int8_seeds"), help="where the seeds' runs and exports go")
    parser.add_argument("--run-dir", type=Path, action="append", default=[],
                        help="a finished run to add (its int8 export goes beside the seeds'); repeatable")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_seeds.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        home = trained(args.runs / f"seed{seed}", seed, args.epochs, args.head_epochs)
        rows.append(row(f"seed {seed} ({args.epochs} + {args.head_epochs} epochs)", home,
                        args.runs / f"seed{seed}-int8"))
    for k, run_dir in enumerate(args.run_dir):
        rows.append(row(f"{run_dir}", run_dir, args.runs / f"extra{k}-int8"))
    for r in rows:
        print(f"{r['network']:40s} backbone {100 * r['backbone_fp32_accuracy']:.2f} %, int8 LEENet "
              f"{100 * r['int8_after_refit']['accuracy']:.2f} % at {r['int8_after_refit']['cost']:.3f} "
              f"({r['int8_minus_backbone_pt']:+.2f} pt), refit vs float32 {r['refit_minus_float32_pt']:+.2f} pt / "
              f"{r['refit_cost_change']:+.4f}, before refit {r['before_minus_float32_pt']:+.2f} pt / "
              f"{r['before_cost_change']:+.4f}, same exit {100 * r['same_exit']:.2f} %")
    summary = {
        "question": "Does the int8 export keep its promise on several trained networks (test figures, choices on "
                    "calibration)?",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv), "cpu": cpu_info(), "seconds": time.perf_counter() - start,
        "recipe": {"dataset": "fashion-mnist", "epochs": args.epochs, "head_epochs": args.head_epochs},
        "goals": GOALS, "rows": rows,
        "all_goals_met": all(all(r["goals_met"].values()) for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
