"""How fast is an int8 LEENet against the plain backbone in float32 and in int8, in onnxruntime on a CPU?

Two models, in one run (the ratios within a run are what count; the machine's load is recorded):

* a finished Fashion-MNIST run (``--run``, default /work/runs/fmnist): the plain backbone (its
  stages chained in one graph) in float32 and in int8 (what a user would pick instead of early
  exits), and LEENet in float32 (``leenet export``) and in int8 (``leenet export --int8``: the
  saved policy, its threshold refit on the int8 outputs), all on the run's test images; each
  row's accuracy on the whole test split beside its speed;
* ResNet-50 at 224 px with random weights, the plain backbone only (float32, int8 with uint8
  activations, int8 with int8 activations): random exits would say nothing about a routed
  ResNet-50, the backbone's int8 speed-up is the figure that transfers. Calibrated on random
  images (speed only).

Batch 1 (one image per call, over ``--images1`` images) and batch 64 (over ``--images64``), one
thread and every core (``os.cpu_count()``; LEENet's stage sessions then do not spin, as in the
server: their idle threads would fight over the cores), after a warm-up, median of ``--repeats``. Each int8
graph is quantized as ``leenet export --int8`` does (QDQ, per-channel int8 weights, MinMax,
uint8 activations unless said). The CPU model and its VNNI/AMX flags are printed and recorded:
int8 is fast only where the CPU has integer dot-product instructions.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/int8_speed.py --run /work/runs/fmnist \\
        --int8-export /work/runs/fmnist-int8 --out benchmarks/results/int8_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from leenet.export import (
    QuantizeOptions,
    calibration_sample,
    export_int8,
    export_onnx,
    load_run,
    quantize_graph,
    read_report,
    run_splits,
    split_arrays,
)
from leenet_runtime import ExitRunner

FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """The CPU model, its integer dot-product flags, cores, and the load when measured."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, **{flag: flag in flags for flag in FLAGS}, "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()), "uptime": _uptime(), "onnxruntime": ort.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Backbone(nn.Module):
    """The plain backbone: an ExitNet's stages chained, no heads or gates."""

    def __init__(self, stages: nn.ModuleList) -> None:
        super().__init__()
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def export_plain(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, *shape),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def quantized(source: Path, images: np.ndarray, activations: str = "uint8") -> Path:
    target = source.with_name(f"{source.stem}_int8_{activations}.onnx")
    feeds = [{"x": images[k: k + 64]} for k in range(0, len(images), 64)]
    quantize_graph(source, target, feeds, QuantizeOptions(activations=activations), None)
    return target


def session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"x": x})[0]


def routed(export: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    # several sessions' idle threads spinning fight over the cores: no spinning with more than one thread
    runner = ExitRunner(export, threads=threads, spin=threads == 1, providers=["CPUExecutionProvider"])
    return lambda x: runner(x)[0]


def seconds_per_image(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, repeats: int) -> float:
    """Median over ``repeats`` of the wall time of running ``images`` in batches of ``batch``, per image."""
    batches = [images[k: k + batch] for k in range(0, len(images) - batch + 1, batch)]
    for b in batches[: max(1, len(batches) // 4)]:  # warm-up
        run(b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            run(b)
        times.append((time.perf_counter() - start) / (len(batches) * batch))
    return statistics.median(times)


def accuracy(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.concatenate([run(images[k: k + 256]).argmax(1) for k in range(0, len(images), 256)])
    return float((predicted == labels).mean())


def time_rows(model: str, configs: dict[str, Callable[[int], Callable]], images: np.ndarray, args,
              accuracies: dict[str, float] | None = None) -> list[dict]:
    """One row per config, batch size and thread count; speed-ups against the float32 backbone's row."""
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        for batch, count in ((1, args.images1), (64, args.images64)):
            base = None
            for name, make in configs.items():
                s = seconds_per_image(make(threads), images[:count], batch, args.repeats)
                base = base or s
                row = {"model": model, "config": name, "batch": batch, "threads": threads, "images": count,
                       "ms_per_image": 1e3 * s, "images_per_s": 1.0 / s, "speedup_vs_fp32_backbone": base / s}
                if accuracies is not None:
                    row["test_accuracy"] = accuracies[name]
                rows.append(row)
                print(f"{model:14s} {name:26s} batch {batch:3d} threads {threads}: {1e3 * s:8.3f} ms/image "
                      f"({base / s:5.2f}x)", flush=True)
    return rows


def fashion_mnist(args, work: Path) -> tuple[list[dict], dict]:
    net, _, _ = load_run(args.run)
    splits = run_splits(args.run)
    calib, (test, labels) = split_arrays(splits.calib)[0], split_arrays(splits.test)
    plain = export_plain(Backbone(net.stages), tuple(net.input_shape), work / "fmnist_backbone.onnx")
    plain_int8 = quantized(plain, calibration_sample(calib, QuantizeOptions()))
    export_onnx(args.run, work / "leenet_fp32")
    int8 = Path(args.int8_export) if args.int8_export else work / "leenet_int8"
    if not (int8 / "manifest.json").is_file():
        export_int8(args.run, int8)
    configs = {"backbone fp32": lambda t: session(plain, t), "backbone int8": lambda t: session(plain_int8, t),
               "leenet fp32": lambda t: routed(work / "leenet_fp32", t), "leenet int8": lambda t: routed(int8, t)}
    accuracies = {name: accuracy(make(os.cpu_count() or 1), test, labels) for name, make in configs.items()}
    report = read_report(int8)
    policy = {"int8_export": str(int8), "policy": report.policy, "float32": vars(report.test.float32),
              "int8_after_refit": vars(report.test.int8_after_refit),
              "int8_before_refit": vars(report.test.int8_before_refit), "same_exit": report.test.same_exit}
    return time_rows("fashion-mnist", configs, test, args, accuracies), policy


def resnet50(args, work: Path) -> list[dict]:
    torch.manual_seed(0)
    plain = export_plain(torchvision.models.resnet50(), (3, 224, 224), work / "resnet50.onnx")
    images = np.random.default_rng(0).normal(size=(args.images64, 3, 224, 224)).astype(np.float32)
    configs = {"backbone fp32": lambda t: session(plain, t)}
    for activations in ("uint8", "int8"):
        path = quantized(plain, images[:32], activations)
        configs[f"backbone int8 ({activations} act)"] = lambda t, p=path: session(p, t)
    return time_rows("resnet50-224", configs, images, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="/work/runs/fmnist", help="a finished Fashion-MNIST run directory")
    parser.add_argument("--int8-export", help="its int8 export (made there when missing); default: a temporary one")
    parser.add_argument("--images1", type=int, default=256, help="images timed one at a time (ResNet-50: 16)")
    parser.add_argument("--images64", type=int, default=2048, help="images timed in batches of 64 (ResNet-50: 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-resnet50", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/int8_speed.json")
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}; " + ", ".join(f"{f} {'yes' if cpu[f] else 'no'}" for f in FLAGS)
          + f"; {cpu['cores']} cores; load {cpu['load_average']}")
    work = Path(tempfile.mkdtemp(prefix="int8-speed-"))
    started = time.time()
    try:
        rows, policy = fashion_mnist(args, work)
        if not args.skip_resnet50:
            small = argparse.Namespace(**{**vars(args), "images1": 16, "images64": 64, "repeats": 2})
            rows += resnet50(small, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"question": __doc__.split("\n\n")[0], "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python benchmarks/int8_speed.py "
           + " ".join(sys.argv[1:]),
           "cpu": cpu, "load_average_after": list(os.getloadavg()), "uptime_after": _uptime(),
           "seconds": time.time() - started,
           "fashion_mnist_policy": policy, "rows": rows,
           "resnet50": "random weights, plain backbone only (no exits), calibrated on 32 random images; "
                       "16 images at batch 1, 64 at batch 64, median of 2"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
