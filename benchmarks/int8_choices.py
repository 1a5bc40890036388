"""Which int8 settings should `leenet export --int8` use: activation type, calibration method, quantized part?

Each setting is one full int8 export of a finished run (``--run``): the stage graphs quantized
stage by stage, the threshold refit, both splits evaluated (its ``quantization.json``). The choice
reads the calibration figures only (every exit's int8 accuracy against float32, the refit
policy's accuracy and cost); the test figures are recorded beside them. Each export's routed
network is also timed in onnxruntime (batch 64 and batch 1, one thread, median of 3, the
run's first test images), float32 in the same run as the reference.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/int8_choices.py --run /work/runs/fmnist \\
        --work /work/runs/int8-choices --out benchmarks/results/int8_choices.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path

from int8_speed import cpu_info, routed, seconds_per_image

from leenet.export import QuantizeOptions, export_int8, export_onnx, read_report, run_splits, split_arrays

BACKBONE = "backbone"
SETTINGS = {  # name → options, each spelled out (the export's default is the last, chosen by this measurement)
    "uint8 minmax": QuantizeOptions(activations="uint8", method="minmax", quantize=BACKBONE),
    "int8 minmax": QuantizeOptions(activations="int8", method="minmax", quantize=BACKBONE),
    "uint8 entropy": QuantizeOptions(activations="uint8", method="entropy", quantize=BACKBONE),
    "uint8 percentile": QuantizeOptions(activations="uint8", method="percentile", quantize=BACKBONE),
    "uint8 minmax +heads": QuantizeOptions(activations="uint8", method="minmax", quantize="backbone+heads"),
}


def figures(split) -> dict:
    return {"exit_accuracy_float32": [e.float32_accuracy for e in split.exits],
            "exit_accuracy_int8": [e.int8_accuracy for e in split.exits],
            "exit_same_class": [e.same_class for e in split.exits],
            "policy_float32": [split.float32.accuracy, split.float32.cost],
            "policy_int8_before_refit": [split.int8_before_refit.accuracy, split.int8_before_refit.cost],
            "policy_int8_after_refit": [split.int8_after_refit.accuracy, split.int8_after_refit.cost],
            "refit_threshold": split.int8_after_refit.threshold, "same_exit": split.same_exit,
            "same_exit_before_refit": split.same_exit_before_refit}


def _rounded(values: list) -> list:
    return [None if v is None else round(v, 4) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="/work/runs/fmnist")
    parser.add_argument("--work", required=True, help="where the exports are written (kept; reused when present)")
    parser.add_argument("--only", nargs="*", help="setting names to measure (default: all)")
    parser.add_argument("--images", type=int, default=2048, help="test images timed")
    parser.add_argument("--out", default="benchmarks/results/int8_choices.json")
    args = parser.parse_args()
    work = Path(args.work)
    test = split_arrays(run_splits(args.run).test)[0][: args.images]
    if not (work / "float32" / "manifest.json").is_file():
        export_onnx(args.run, work / "float32")
    speed = {}
    for batch in (64, 1):
        count = args.images if batch == 64 else args.images // 8
        speed[f"float32 batch {batch}"] = seconds_per_image(routed(work / "float32", 1), test[:count], batch, 3)
    rows = {}
    for name, options in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        out = work / name.replace(" ", "-").replace("+", "")
        started, made = time.time(), not (out / "manifest.json").is_file()
        if made:
            export_int8(args.run, out, options=options)
        report = read_report(out)
        row = {"options": dataclasses.asdict(options), "export_seconds": time.time() - started if made else None,
               "calibration": figures(report.calibration), "test": figures(report.test)}
        for batch in (64, 1):
            count = args.images if batch == 64 else args.images // 8
            s = seconds_per_image(routed(out, 1), test[:count], batch, 3)
            row[f"ms_per_image_batch{batch}"] = 1e3 * s
            row[f"speedup_vs_float32_leenet_batch{batch}"] = speed[f"float32 batch {batch}"] / s
        rows[name] = row
        calib = row["calibration"]
        print(f"{name:22s} calib exits int8 {_rounded(calib['exit_accuracy_int8'])} "
              f"(float32 {_rounded(calib['exit_accuracy_float32'])}); policy after refit "
              f"{calib['policy_int8_after_refit']}; batch 64 {row['speedup_vs_float32_leenet_batch64']:.2f}x, "
              f"batch 1 {row['speedup_vs_float32_leenet_batch1']:.2f}x float32 LEENet", flush=True)
    out = {"question": __doc__.split("\n\n")[0], "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python benchmarks/int8_choices.py "
           f"--run {args.run} --work {args.work}", "cpu": cpu_info(),
           "float32_leenet_ms_per_image": {k: 1e3 * v for k, v in speed.items()}, "settings": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
