"""Does the server's online audit track the live price of exiting early when traffic drifts?

Question: with ``--audit-rate R``, the server runs a sampled share of answered images on to the
final exit and reports how often the answering exit agreed with it over a sliding window. On a
stream that drifts (Fashion-MNIST test images with growing Gaussian pixel noise, one segment of
the whole test set per noise level), how far is that estimate from the true agreement of every
image of the segment?

Command (about 3 minutes on 2 cores)::

    OMP_NUM_THREADS=1 python benchmarks/serve_audit.py --export runs/serve_load/leenet

The scheduler is the server's own (``leenet_runtime.scheduler``), in process: the audit does not
depend on HTTP. The window is set to the audited rows of one segment (``R`` x 10000), so the
estimate at a segment's end covers that segment; the true agreement comes from every exit of
every image (``ExitRunner.all_exits``). The error of such an estimate is sampling error, about
``sqrt(p (1 - p) / window)``. Writes ``benchmarks/results/serve_audit.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from leenet.datasets.idx import read_fashion_mnist
from leenet_runtime import ExitRunner
from leenet_runtime.preprocess import preprocess_image
from leenet_runtime.scheduler import BatchingConfig, Scheduler


def noisy_stream(images: np.ndarray, sigma: float, runner: ExitRunner, seed: int) -> np.ndarray:
    """(N, C, H, W) network inputs of uint8 ``images`` (N, H, W) with N(0, sigma*255) pixel noise."""
    rng = np.random.default_rng(seed)
    noisy = np.clip(images + rng.normal(0, sigma * 255, images.shape), 0, 255).astype(np.uint8)
    prep = runner.manifest.preprocessing
    return np.stack([preprocess_image(Image.fromarray(img), prep) for img in noisy])


def serve_segment(scheduler: Scheduler, x: np.ndarray, in_flight: int = 256) -> None:
    """Each image its own request, at most ``in_flight`` waiting; returns when all are answered."""
    slots = threading.Semaphore(in_flight)
    for i in range(len(x)):
        slots.acquire()
        scheduler.submit(x[i:i + 1], lambda answer: slots.release())
    for _ in range(in_flight):
        slots.acquire()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--export", type=Path, required=True, help="a Fashion-MNIST export directory")
    p.add_argument("--rates", default="0.05,0.2,0.5", help="audit rates to try")
    p.add_argument("--sigmas", default="0,0.1,0.2,0.3,0.4", help="noise levels (share of full scale), in order")
    p.add_argument("--images", type=int, default=10000, help="test images per segment")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_audit.json"))
    args = p.parse_args()
    runner = ExitRunner(args.export, threads=1)
    data = read_fashion_mnist()
    images = data.test_x[:args.images, 0].numpy().astype(np.float64)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    segments = []
    for k, sigma in enumerate(sigmas):
        x = noisy_stream(images, sigma, runner, seed=k)
        routed, _ = runner(x)
        every, _ = runner.all_exits(x)
        truth = float((routed.argmax(1) == every[:, -1].argmax(1)).mean())
        accuracy = float((routed.argmax(1) == data.test_y[:args.images].numpy()).mean())
        segments.append((sigma, x, truth, accuracy))
        print(f"sigma {sigma}: true agreement {truth:.4f}, accuracy {accuracy:.4f}", flush=True)
    results = []
    for rate in (float(r) for r in args.rates.split(",")):
        window = max(1, round(rate * args.images))
        rows = []
        with Scheduler(runner, BatchingConfig(audit_rate=rate, audit_window=window, seed=1)) as scheduler:
            for sigma, x, truth, accuracy in segments:
                serve_segment(scheduler, x)
                while scheduler.status()["audit"]["pending"]:  # audit rows still on their way to the final exit
                    threading.Event().wait(0.01)
                estimate = scheduler.status()["audit"]["agreement"]
                rows.append({"sigma": sigma, "accuracy": accuracy, "true_agreement": truth, "audited": estimate,
                             "error_pt": round(100 * (estimate - truth), 3),
                             "sampling_se_pt": round(float(100 * np.sqrt(truth * (1 - truth) / window)), 3)})
                print(f"rate {rate}: {rows[-1]}", flush=True)
        results.append({"audit_rate": rate, "window": window, "segments": rows,
                        "max_abs_error_pt": max(abs(r["error_pt"]) for r in rows)})
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "export": str(args.export),
           "command": " ".join(sys.argv), "images_per_segment": args.images, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
