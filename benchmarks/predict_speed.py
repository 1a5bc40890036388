"""Time per image of `leenet predict`, torch against onnxruntime, end to end and routing alone.

For each finished run given (e.g. a digits run and a short Fashion-MNIST run), the run is
exported to ONNX, the first ``--images`` test images are written as 8-bit PNGs, and then:

* routing alone: the preprocessed images routed in batches of B, in process, one thread
  (``ExitNet.forward`` under ``no_grad``; ``leenet_runtime.ExitRunner(threads=1)``);
* read + preprocess: :func:`leenet_runtime.preprocess.load_images` on the files, in process;
* predict (in process): :func:`leenet.predict_files` over the folder, records drawn, model
  loading included: everything ``leenet predict`` does per image but start Python;
* the CLI: ``leenet predict MODEL FILES --engine E --batch-size 64 --json`` in a fresh process
  (``OMP_NUM_THREADS=1``), wall clock, on one image (``startup``: interpreter, imports, model
  load, one image) and on all of them (``cli_total``). The onnx engine's onnxruntime sessions
  use its default thread count here (``leenet predict`` has no thread option).

In-process figures are medians over ``--repeats`` repeats, the engines interleaved; the
processes run once each (each pays several seconds of imports). The models' accuracy is not
the point (the Fashion-MNIST run for timing trains one epoch).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/predict_speed.py --run /tmp/digits --run /tmp/fm \\
        --out benchmarks/results/predict_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from leenet import Results, export_onnx, load_checkpoint, load_dataset, predict_files, read_results
from leenet_runtime import ExitRunner, read_manifest
from leenet_runtime.preprocess import expand_paths, load_images

ENGINES = ("torch", "onnx")
LEENET = Path(sys.executable).with_name("leenet")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_test_pngs(results: Results, folder: Path, count: int) -> Path:
    """The first ``count`` test images of the run's dataset as ordinary 8-bit PNGs (0..255)."""
    data = results.config["data"]
    test = load_dataset(data["dataset"], data_dir=data["data_dir"]).test
    images = test.images[:count].double() * (255.0 / test.value_max)  # digits' 0..16 → 0..255
    pixels = images.round().to(torch.uint8).numpy()  # (count, C, H, W)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return folder


def cli_seconds(model: Path, images: list[str], engine: str, batch: int) -> float:
    """Wall clock of one `leenet predict` process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(LEENET), "predict", str(model), *images, "--engine", engine, "--batch-size", str(batch), "--json"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def routing_seconds(route, batch: np.ndarray, size: int) -> float:
    """Seconds to route ``batch`` in chunks of ``size`` with ``route`` (a callable on one chunk)."""
    start = time.perf_counter()
    for i in range(0, len(batch), size):
        route(batch[i:i + size])
    return time.perf_counter() - start


def measure(run_dir: Path, work: Path, count: int, batches: list[int], repeats: int) -> dict:
    """Every figure for one run (seconds per image, medians)."""
    results = read_results(run_dir / "results.json")
    export = work / "export"
    export_onnx(run_dir, export)
    folder = write_test_pngs(results, work / "images", count)
    files = [str(p) for p in expand_paths([folder])]
    prep = read_manifest(export).preprocessing
    net, runner = load_checkpoint(run_dir / "model.pt").eval(), ExitRunner(export, threads=1)
    batch, _, errors = load_images(files, prep)
    assert not errors, errors

    def torch_route(x: np.ndarray) -> None:
        with torch.no_grad():
            net(torch.from_numpy(x))

    routes = {"torch": torch_route, "onnx": runner}
    models = {"torch": run_dir, "onnx": export}
    samples: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)

    for _ in range(repeats):
        start = time.perf_counter()
        load_images(files, prep)
        add("read_preprocess", (time.perf_counter() - start) / count)
        for size in batches:
            for engine in ENGINES:
                routes[engine](batch[:size])  # warm-up
                add(f"route/{engine}/b{size}", routing_seconds(routes[engine], batch, size) / count)
                start = time.perf_counter()
                records = list(predict_files(models[engine], [folder], engine=engine, batch_size=size))
                add(f"predict/{engine}/b{size}", (time.perf_counter() - start) / len(records))
    for engine in ENGINES:
        add(f"startup/{engine}", cli_seconds(models[engine], files[:1], engine, 64))
        add(f"cli_total/{engine}", cli_seconds(models[engine], [str(folder)], engine, 64))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {"run": str(run_dir), "dataset": results.dataset, "arch": results.backbone.name,
            "input_shape": list(runner.input_shape), "images": count,
            "exit_fractions": list(results.routed_check.exit_fractions),
            "accuracy": results.routed_check.accuracy, "seconds": medians, "samples": samples}


def table(rows: list[dict], batches: list[int]) -> str:
    """A markdown table: milliseconds per image, and the CLI's wall clock in seconds."""
    lines = ["| model | engine | batch | routing ms/img | predict ms/img (in process) | "
             "`leenet predict` s: 1 image / all |", "|---|---|---|---|---|---|"]
    for row in rows:
        s, name = row["seconds"], f"{row['dataset']} {row['arch']}"
        for size in batches:
            for engine in ENGINES:
                cli = (f"{s[f'startup/{engine}']:.1f} / {s[f'cli_total/{engine}']:.1f} ({row['images']})"
                       if size == max(batches) else "")
                lines.append(f"| {name} | {engine} | {size} | {s[f'route/{engine}/b{size}'] * 1e3:.3f} | "
                             f"{s[f'predict/{engine}/b{size}'] * 1e3:.2f} | {cli} |")
        lines.append(f"| {name} | read + preprocess | - | - | {s['read_preprocess'] * 1e3:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a finished run directory (repeatable)")
    parser.add_argument("--images", type=int, default=360, help="test images per run (default 360)")
    parser.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument("--out", default="benchmarks/results/predict_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(run), Path(tmp) / f"run{i}", args.images, batches, args.repeats)
                for i, run in enumerate(args.run)]
    payload = {
        "command": " ".join(["OMP_NUM_THREADS=1", "python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "torch": torch.__version__,
                    "onnxruntime": ort.__version__, "threads": 1},
        "rows": rows, "table": table(rows, batches),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(payload["table"])
    print(f"load average before {load_before}, after {payload['machine']['load_average_after']}")


if __name__ == "__main__":
    main()
