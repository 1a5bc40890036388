"""Digits: gates trained for FLOPs against gates trained for measured time (``--cost latency``).

Runs ``leenet run`` twice with the same seed, once per cost unit, then times both saved models
and the plain backbone at batch 1 on the test images, interleaved (each round calls all three
back to back, in alternating order), on this thread's CPU clock so that waiting for a core on a
shared machine is not counted::

    OMP_NUM_THREADS=1 python benchmarks/latency_policy.py --out benchmarks/results/latency_policy_digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leenet import RunConfig, load_checkpoint, load_dataset, run
from leenet.evaluate import PlainBackbone
from leenet.evaluate.timing import interleaved_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    report: dict = {"command": "python benchmarks/latency_policy.py", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "load_before": os.getloadavg(), "policies": {}}
    nets = {}
    for unit in ("flops", "latency"):
        results = run(RunConfig(out=str(work / unit), cost=unit, timing=False, progress=False), log=lambda m: None)
        nets[unit] = load_checkpoint(work / unit / "model.pt").eval()
        selected = results["selected"]
        report["policies"][unit] = {"alpha": selected["param"], "accuracy": selected["accuracy"],
                                    "enabled_exits": nets[unit].enabled_exits().tolist()}
    test = load_dataset("digits").test
    singles = [test[i][0][None] for i in range(len(test))]
    plain = PlainBackbone(nets["flops"])
    calls = {"backbone": lambda: [plain(x) for x in singles]}
    calls.update({unit: (lambda n=net: [n(x) for x in singles]) for unit, net in nets.items()})
    with torch.inference_mode():
        seconds = interleaved_seconds(calls, repeats=args.repeats, warmup=2, device=torch.device("cpu"),
                                      clock=time.thread_time, alternate=True)
    backbone = np.array(seconds["backbone"])
    for unit in nets:
        ratio = backbone / np.array(seconds[unit])
        report["policies"][unit].update(us_per_image=float(np.median(seconds[unit]) / len(singles) * 1e6),
                                        speedup_over_backbone=float(np.median(ratio)))
    paired = np.array(seconds["flops"]) / np.array(seconds["latency"])
    report.update(backbone_us_per_image=float(np.median(backbone) / len(singles) * 1e6),
                  latency_over_flops_speedup=float(np.median(paired)),
                  latency_over_flops_iqr=[float(np.percentile(paired, 25)), float(np.percentile(paired, 75))],
                  load_after=os.getloadavg())
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
