"""Serving under load: does LEENet's saving survive an HTTP server with batching built for exits?

Question: offered Poisson traffic (open loop), how do latency and the highest rate within a p99
SLO compare between the plain backbone and LEENet, each behind the same server, and against the
plain backbone's ONNX graph behind a standard server with its own dynamic batching (LitServe)?

Command (about 10 minutes on 2 cores; the servers on CPU 0, this client on CPU 1)::

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --run runs/fmnist

Rows: ``backbone`` (the same export with every gate off, served by ``leenet-runtime serve``),
``litserve`` (the backbone's single ONNX graph in LitServe, batch 64, 2 ms timeout, JSON with
a base64 PNG, as a user would write it), ``request`` and ``stage`` (LEENet with request- or
stage-level batching). Each row: latency of one request at a time (the floor), then a ladder of
rates (x1.2 each step) until two rates past saturation (throughput below 85 % of the offered
rate, or p99 over 40x the SLO; the SLO is 5x the backbone's one-request latency), and a point
at half the backbone's saturation rate (the highest rate it keeps up with: 95 % achieved,
nothing lost). Also measured: the in-process speed-up
(ExitRunner, batch 64, one thread), the server's overhead at low load, and whether the served
answers on the whole test set equal the offline evaluation of the export. Writes
``benchmarks/results/serve_load/serve_load.json`` and ``serve_load.png``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import matplotlib
import torch
from loadgen import Result, closed_loop, max_rate_under, open_loop, percentile, saturation_rate, sequential
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from leenet.datasets.idx import read_fashion_mnist
from leenet.export import export_onnx
from leenet.export.metadata import load_run
from leenet_runtime import ExitRunner
from leenet_runtime.preprocess import open_image, preprocess_image

HOST = "127.0.0.1"
ROWS = ("backbone", "litserve", "request", "stage")
LITSERVE_APP = Path(__file__).resolve().parent / "litserve_backbone.py"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build_exports(run: Path, work: Path) -> dict[str, Path]:
    """The LEENet export, the same network with every gate off, and the backbone as one ONNX graph."""
    net, prep, names = load_run(run)
    out = {"leenet": work / "leenet", "backbone": work / "backbone", "graph": work / "backbone.onnx"}
    if not out["leenet"].exists():
        export_onnx(net, out["leenet"], class_names=list(names), preprocessing=prep)
    if not out["backbone"].exists():
        for gate in net.gates:
            gate.enabled.fill_(False)
        export_onnx(net, out["backbone"], class_names=list(names), preprocessing=prep)
    if not out["graph"].exists():
        whole = torch.nn.Sequential(*net.stages).eval()
        example = torch.zeros(1, *net.input_shape)
        torch.onnx.export(whole, (example,), str(out["graph"]), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return out


def test_pngs(limit: int | None) -> tuple[list[bytes], np.ndarray]:
    data = read_fashion_mnist()
    images, labels = data.test_x[:limit].numpy(), data.test_y[:limit].numpy()
    bodies = []
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(img[0]).save(buffer, "PNG")
        bodies.append(buffer.getvalue())
    return bodies, np.asarray(labels)


def in_process(exports: dict[str, Path], bodies: list[bytes], cpu: int) -> dict:
    """ExitRunner alone: images/s at batch 64 for LEENet and the backbone, and one image's time with decoding."""
    os.sched_setaffinity(0, {cpu})
    runners = {k: ExitRunner(exports[k], threads=1) for k in ("leenet", "backbone")}
    prep = runners["leenet"].manifest.preprocessing
    x = np.stack([preprocess_image(open_image(io.BytesIO(b)), prep) for b in bodies[:2048]])
    out = {}
    for name, runner in runners.items():
        runner(x[:256])
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            for s in range(0, len(x), 64):
                runner(x[s:s + 64])
            rates.append(len(x) / (time.perf_counter() - t))
        single = []
        for b in bodies[:300]:
            t = time.perf_counter()
            runner(preprocess_image(open_image(io.BytesIO(b)), prep)[None])
            single.append(time.perf_counter() - t)
        out[name] = {"batch64_images_per_s": round(float(np.median(rates)), 1),
                     "one_image_with_decoding_ms": round(float(np.median(single)) * 1000, 3)}
    out["speedup_batch64"] = round(out["leenet"]["batch64_images_per_s"] / out["backbone"]["batch64_images_per_s"], 3)
    return out


class Server:
    """One server process on CPU ``cpu``, stopped with SIGTERM."""

    def __init__(self, row: str, exports: dict[str, Path], cpu: int, port: int) -> None:
        self.port = port
        if row == "litserve":
            cmd = [sys.executable, str(LITSERVE_APP), str(exports["graph"]), str(exports["leenet"]), str(port)]
            self.path, self.kind = "/predict", "application/json"
        else:
            export = exports["backbone" if row == "backbone" else "leenet"]
            cmd = [sys.executable, "-m", "leenet_runtime.cli", "serve", str(export), "--port", str(port), "--threads",
                   "1", "--batching", "request" if row == "request" else "stage", "--log-level", "warning"]
            self.path, self.kind = "/v1/classify", "image/png"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        ready = "/health" if row == "litserve" else "/v2/health/ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{HOST}:{port}{ready}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"{row} server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def run_row(row: str, exports, bodies, cpu: int, port: int, args, slo_s: float | None, half_rate: float | None,
            start_rate: float) -> dict:
    server = Server(row, exports, cpu, port)
    payload = [json.dumps({"png": base64.b64encode(b).decode()}).encode() for b in bodies] if row == "litserve" \
        else bodies
    try:
        sequential(HOST, port, server.path, payload, 100, server.kind)  # warm-up
        floor = sequential(HOST, port, server.path, payload, args.sequential, server.kind)
        slo = slo_s if slo_s is not None else 5 * float(np.median(floor))
        ladder: list[Result] = []
        rate, saturated = start_rate, 0
        while saturated < 2 and rate < args.max_rate:  # up to two rates past saturation
            r = open_loop(HOST, port, server.path, payload, rate=rate, duration=args.duration,
                          content_type=server.kind, seed=len(ladder))
            ladder.append(r)
            print(f"  {row}: {r.summary()}", flush=True)
            summary = r.summary()
            saturated += summary["achieved_rps"] < 0.85 * rate or percentile(r.latency_s, 99) > 40 * slo
            rate *= 1.2
            time.sleep(1.0)  # let the queues drain
        half_rate = half_rate if half_rate is not None else saturation_rate(ladder) / 2  # the backbone's own
        half = None if half_rate <= 0 else open_loop(HOST, port, server.path, payload, rate=half_rate,
                                                     duration=2 * args.duration, content_type=server.kind,
                                                     seed=99).summary()
        return {"one_at_a_time_ms": {"p50": round(float(np.median(floor)) * 1000, 3),
                                     "p99": round(float(np.percentile(floor, 99)) * 1000, 3)},
                "slo_ms": round(slo * 1000, 3), "ladder": [r.summary() for r in ladder],
                "max_rate_within_slo": max_rate_under(ladder, slo), "saturation_rate": saturation_rate(ladder),
                "at_half_backbone_rate": half}
    finally:
        server.stop()


def served_equals_offline(exports, bodies, labels, cpu: int, port: int) -> dict:
    """Every test image through the stage server (16 at a time) against ExitRunner offline."""
    runner = ExitRunner(exports["leenet"], threads=1)
    prep = runner.manifest.preprocessing
    x = np.stack([preprocess_image(open_image(io.BytesIO(b)), prep) for b in bodies])
    logits, exits = runner(x)
    server = Server("stage", exports, cpu, port)
    try:
        answers = closed_loop(HOST, port, "/v1/classify", bodies, concurrency=16)
    finally:
        server.stop()
    served = [json.loads(body)[0] for status, body in answers]
    s_class = np.array([r["class_index"] for r in served])
    s_exit = np.array([r["exit_index"] for r in served])
    costs = runner.costs
    return {"images": len(bodies), "statuses": sorted({s for s, _ in answers}),
            "offline": {"accuracy": float((logits.argmax(1) == labels).mean()), "mean_cost": float(costs[exits].mean())},
            "served": {"accuracy": float((s_class == labels).mean()), "mean_cost": float(costs[s_exit].mean())},
            "same_class": float((s_class == logits.argmax(1)).mean()), "same_exit": float((s_exit == exits).mean()),
            "exit_histogram": {n: int((exits == i).sum()) for i, n in enumerate(runner.exit_names)}}


def plot(results: dict, path: Path) -> None:
    """Latency (p50 and p99) against offered rate per row, and the exit histogram."""
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    for (name, row), color in zip(results["rows"].items(), ("#555555", "#b07aa1", "#4e79a7", "#e15759")):
        pts = [r for r in row["ladder"] if r["p50_ms"] is not None]
        rate = [r["offered_rps"] for r in pts]
        ax.plot(rate, [r["p50_ms"] for r in pts], "--", color=color, alpha=0.7)
        ax.plot(rate, [r["p99_ms"] if r["p99_ms"] is not None else np.nan for r in pts], "-o", ms=3, color=color,
                label=f"{name}: {row['max_rate_within_slo']:.0f} req/s within SLO")
    slo = results["rows"]["backbone"]["slo_ms"] if "backbone" in results["rows"] else None
    if slo:
        ax.axhline(slo, color="k", lw=0.8, ls=":", label=f"p99 SLO {slo:.1f} ms")
    ax.set(xlabel="offered requests per second (Poisson)", ylabel="latency ms (solid p99, dashed p50)", yscale="log",
           title="Fashion-MNIST saved model behind an HTTP server")
    ax.legend(fontsize=8)
    exits = results["served_vs_offline"]["exit_histogram"]
    hist.bar(list(exits), list(exits.values()), color="#4e79a7")
    hist.set(title="test images answered per exit", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished Fashion-MNIST `leenet run` directory")
    p.add_argument("--work", type=Path, default=Path("runs/serve_load"), help="where the exports are written")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load"))
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of traffic per offered rate")
    p.add_argument("--sequential", type=int, default=300, help="one-at-a-time requests for the floor")
    p.add_argument("--max-rate", type=float, default=20000.0, help="stop a ladder here")
    p.add_argument("--start-rate", type=float, default=None,
                   help="first offered rate (default 0.15x the backbone's in-process batch-64 images/s)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--port", type=int, default=18731)
    p.add_argument("--images", type=int, default=None, help="test images to use (default all 10000)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    exports = build_exports(args.run, args.work)
    bodies, labels = test_pngs(args.images)
    speed = in_process(exports, bodies, args.server_cpu)
    print("in process:", speed, flush=True)
    os.sched_setaffinity(0, {args.client_cpu})
    start = args.start_rate or 0.15 * speed["backbone"]["batch64_images_per_s"]
    rows: dict[str, dict] = {}
    for k, row in enumerate(args.rows.split(",")):
        bb = rows.get("backbone")
        rows[row] = run_row(row, exports, bodies, args.server_cpu, args.port + k, args,
                            slo_s=None if bb is None else bb["slo_ms"] / 1000,
                            half_rate=None if bb is None else bb["saturation_rate"] / 2, start_rate=start)
    check = served_equals_offline(exports, bodies, labels, args.server_cpu, args.port + 10)
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": os.getloadavg()},
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
               "command": " ".join(sys.argv), "in_process": speed, "rows": rows, "served_vs_offline": check}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "serve_load.png")
    print(json.dumps({k: v.get("max_rate_within_slo") for k, v in rows.items()}))


if __name__ == "__main__":
    main()
