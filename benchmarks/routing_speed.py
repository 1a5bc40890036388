"""How close does routed inference come to its FLOPs speed-up, and what is routing overhead?

Builds an ExitNet on a registered backbone with a dataset's default heads and gates (random
weights: speed does not depend on them) and times, for each exit pattern, three things on
the same images, interleaved, after warm-up, median of repeats:

* routed: the routed network (``ExitNet.forward``; ``leenet_runtime.ExitRunner`` over the
  staged ONNX export);
* ideal: the same stages, heads and gates the routed pass runs, back to back on batches
  already of the right size (stage j on the m_j rows that reach it), with no decisions,
  compaction or bookkeeping: what a perfect router would pay;
* backbone: the plain backbone (one ONNX graph for onnxruntime).

Patterns: everyone forced out at exit k (gate biases set to always/never fire), every gate on
and none firing, every gate off, and a mix with the exit fractions of the saved Fashion-MNIST
model (random gates, biases set so those fractions leave on these images). ``overhead =
routed / ideal - 1`` is what routing adds; ``ideal x`` below the FLOPs speed-up is "FLOPs are
not time" (heads and gates cost more time than their FLOPs say).

Each table row is one (engine, threads, batch, pattern); its ratios are medians over rounds
of ratios taken within a round (routed and ideal run back to back, in alternating order), so
a neighbour's load cancels; ``(IQR)`` shows how much they still moved. On a shared machine
time one thread with ``--clock cpu`` (this thread's CPU time, not the time it waited).

Usage::

    python benchmarks/routing_speed.py --out benchmarks/results/routing_speed_small_resnet.json  # ~2.5 min alone
    python benchmarks/routing_speed.py --engines torch --threads 1 --clock cpu  # one thread, loaded machine
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from leenet.backbones import build_backbone, get_backbone_info
from leenet.config import HEAD_KINDS
from leenet.defaults import dataset_defaults
from leenet.evaluate import PlainBackbone
from leenet.evaluate.latency import measure_latency
from leenet.evaluate.timing import interleaved_seconds
from leenet.export import export_onnx
from leenet.nn import ExitNet, attach_exits, gate_features
from leenet_runtime import ExitRunner

MIX_FROM = Path(__file__).parent / "results/fashion_mnist_sdn/results.json"  # the saved model's exits


def force_exit(net: ExitNet, k: int | None) -> ExitNet:
    """Gate k always fires, every other gate never (k None: none fires)."""
    for i, gate in enumerate(net.gates):
        torch.nn.init.zeros_(gate.mlp[-1].weight)
        torch.nn.init.constant_(gate.mlp[-1].bias, 50.0 if i == k else -50.0)
    return net


@torch.no_grad()
def mix_exits(net: ExitNet, images: Tensor, fractions: list[float], seed: int = 0) -> ExitNet:
    """Random gates whose biases let ``fractions[k]`` of ``images`` out at exit k."""
    gen = torch.Generator().manual_seed(seed)
    out = net.forward_all(images)
    counts = np.diff(np.round(np.cumsum([0.0, *fractions]) * len(images))).astype(int)
    reaching = torch.ones(len(images), dtype=torch.bool)
    for i, gate in enumerate(net.gates):
        inputs = gate_features(out.logits[:, i], out.logits[:, :i], out.pooled[i], net.gate_config)
        gate.fit_input_stats(inputs)
        for layer in gate.mlp:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
                layer.bias.zero_()
        scores = gate.logit(inputs)
        ranked = scores[reaching].sort(descending=True).values
        n = int(counts[i])
        upper = ranked[n - 1] if n > 0 else ranked[0] + 2.0
        lower = ranked[n] if n < len(ranked) else ranked[-1] - 2.0
        gate.mlp[-1].bias -= (upper + lower) / 2 - math.log(net.threshold / (1 - net.threshold))
        reaching &= gate(inputs) < net.threshold
    return net


def ideal_torch(net: ExitNet, x: Tensor, rows: list[int], plan: tuple[list[bool], list[bool]]) -> Tensor:
    """The stages, heads and gates a routed pass runs, without routing: stage j on ``rows[j]`` rows."""
    enabled, needed = plan
    h, prev = x, None
    for j, stage in enumerate(net.stages):
        if rows[j] == 0:
            break
        h = stage(h[:rows[j]])
        if j == net.num_exits - 1 or not needed[j]:
            continue
        logits = net.heads[j](h)
        prev = logits.new_empty(len(h), 0, logits.shape[-1]) if prev is None else prev[:rows[j]]
        if enabled[j]:
            torch.sigmoid(net.gate_logit(j, h, logits, prev))
        if net.gate_config.history:
            prev = torch.cat([prev, logits[:, None]], dim=1)
    return h


def rows_reaching(exit_index: Tensor, num_exits: int) -> list[int]:
    """How many of the samples reach each stage."""
    return [int((exit_index >= j).sum()) for j in range(num_exits)]


class OnnxPattern:
    """One pattern's staged export: its router, and its stage graphs run without routing."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        self.runner = ExitRunner(folder, providers=["CPUExecutionProvider"], threads=threads)
        self.exits = self.runner.manifest.exits

    def ideal(self, x: np.ndarray, rows: list[int]) -> np.ndarray:
        h, prev = x, None
        for j, (entry, session) in enumerate(zip(self.exits, self.runner.sessions)):
            if rows[j] == 0:
                break
            feeds = {"x": h[:rows[j]]}
            if "prev_logits" in entry.inputs:
                feeds["prev_logits"] = prev[:rows[j]]
            outs = dict(zip(entry.outputs, session.run(list(entry.outputs), feeds)))
            if j == len(self.exits) - 1:
                return outs["logits"]
            h = outs["features"]
            if "logits" in outs:
                logits = outs["logits"][:, None]
                prev = logits if prev is None else np.concatenate([prev[:rows[j]], logits], axis=1)
        return h


def onnx_backbone(net: ExitNet, path: Path) -> Path:
    """Export the plain backbone as one ONNX graph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PlainBackbone(net).eval(), (torch.zeros(2, *net.input_shape),), str(path),
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                          opset_version=17, dynamo=False)
    return path


def build_patterns(net: ExitNet, images: Tensor, fractions: list[float]) -> dict[str, ExitNet]:
    patterns = {f"all out at {net.exit_names[k]}": force_exit(copy.deepcopy(net), k) for k in range(net.num_exits - 1)}
    patterns["none fires (gates on)"] = force_exit(copy.deepcopy(net), None)
    off = force_exit(copy.deepcopy(net), None)
    for gate in off.gates:
        gate.enabled.fill_(False)
    patterns["gates off"] = off
    patterns["saved-model mix"] = mix_exits(copy.deepcopy(net), images, fractions)
    return {name: p.eval() for name, p in patterns.items()}


def torch_fns(patterns: dict[str, ExitNet], xs: list[Tensor], reach: dict[str, list[list[int]]]) -> dict:
    """backbone, and per pattern the routed and ideal passes over every batch of ``xs``."""
    plain = PlainBackbone(next(iter(patterns.values())))
    fns = {"backbone": lambda: [plain(x) for x in xs]}
    for name, net in patterns.items():
        fns[f"routed|{name}"] = partial(lambda net: [net(x) for x in xs], net)
        fns[f"ideal|{name}"] = partial(lambda net, r, plan: [ideal_torch(net, x, n, plan) for x, n in zip(xs, r)],
                                       net, reach[name], net.exit_plan())  # read once, outside the timed passes
    return fns


def onnx_fns(folders: dict[str, Path], backbone: Path, threads: int, xs: list[Tensor],
             reach: dict[str, list[list[int]]]) -> dict:
    arrays = [x.numpy() for x in xs]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(backbone), options, providers=["CPUExecutionProvider"])
    fns = {"backbone": lambda: [plain.run(None, {"x": a}) for a in arrays]}
    for name, folder in folders.items():
        engine = OnnxPattern(folder, threads)
        fns[f"routed|{name}"] = partial(lambda e: [e.runner(a) for a in arrays], engine)
        fns[f"ideal|{name}"] = partial(lambda e, r: [e.ideal(a, n) for a, n in zip(arrays, r)], engine, reach[name])
    return fns


def time_patterns(engine: str, patterns: dict[str, ExitNet], folders: dict[str, Path], backbone: Path,
                  images: Tensor, batch: int, threads: int, args: argparse.Namespace) -> list[dict]:
    """Rows per pattern: routed, ideal and backbone time per image, all interleaved."""
    torch.set_num_threads(threads)
    xs = [images] if batch > 1 else list(images[:args.singles].split(1))
    exits = {name: net(images)[1][:sum(len(x) for x in xs)] for name, net in patterns.items()}
    reach = {name: [rows_reaching(e, net.num_exits) for e in (ex.split(1) if batch == 1 else [ex])]
             for (name, net), ex in zip(patterns.items(), exits.values())}
    fns = torch_fns(patterns, xs, reach) if engine == "torch" else onnx_fns(folders, backbone, threads, xs, reach)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    started = time.time()
    sec = interleaved_seconds(fns, repeats=args.repeats if batch > 1 else 2 * args.repeats, warmup=1,
                              device=torch.device("cpu"), clock=clock, alternate=True)
    print(f"timed {engine}, {threads} thread(s), batch {batch} in {time.time() - started:.0f} s", file=sys.stderr)
    n, rows = sum(len(x) for x in xs), []
    backbone = np.array(sec["backbone"])
    for name, net in patterns.items():
        ex = exits[name]
        flops = 1.0 / float(net.routed_cost()[ex].mean())
        routed, ideal = np.array(sec[f"routed|{name}"]), np.array(sec[f"ideal|{name}"])
        speedup = float(np.median(backbone / routed))  # ratios within a round, their median
        rows.append({
            "engine": engine, "threads": threads, "batch": batch, "pattern": name, "images": n,
            "exit_fractions": torch.bincount(ex, minlength=net.num_exits).div(len(ex)).tolist(),
            "flops_speedup": flops, "backbone_ms": 1e3 * float(np.median(backbone)) / n,
            "routed_ms": 1e3 * float(np.median(routed)) / n, "ideal_ms": 1e3 * float(np.median(ideal)) / n,
            "measured_speedup": speedup, "ideal_speedup": float(np.median(backbone / ideal)),
            "overhead": float(np.median(routed / ideal)) - 1, "measured_over_flops": speedup / flops,
            "overhead_iqr": np.percentile(routed / ideal - 1, [25, 75]).tolist(),
            "overhead_of_minima": float(routed.min() / ideal.min()) - 1,  # the least disturbed rounds
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_resnet")
    parser.add_argument("--dataset", default="fashion-mnist", help="whose default heads and gates to build")
    parser.add_argument("--head", choices=HEAD_KINDS, help="exit heads instead of the dataset's default (the "
                        "committed run: sdn, then Fashion-MNIST's default)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--engines", default="torch,onnx")
    parser.add_argument("--threads", default="1,all", help="comma-separated torch/onnxruntime threads; all = every core")
    parser.add_argument("--batches", default="256,1")
    parser.add_argument("--singles", type=int, default=32, help="images timed one by one at batch 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds at batch 256 (2x at batch 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time, for one thread on a shared machine")
    parser.add_argument("--channels-last", action="store_true", help="torch in channels-last memory format")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    cores = torch.get_num_threads()
    torch.manual_seed(0)
    defaults = dataset_defaults(args.dataset)
    head = args.head or defaults.head
    model = build_backbone(args.arch, num_classes=10, in_channels=args.channels).eval()
    shape = (args.channels, args.image_size, args.image_size)
    net = attach_exits(model, get_backbone_info(args.arch).default_exits, input_shape=shape, num_classes=10,
                       head=head, gate_config=defaults.gate).eval()
    images = torch.randn(256, *shape, generator=torch.Generator().manual_seed(1))
    fractions = json.loads(MIX_FROM.read_text())["selected"]["exit_fractions"]
    rows, latency = [], {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        patterns = build_patterns(net, images, fractions)
        folders = {name: Path(tmp) / f"p{k}" for k, name in enumerate(patterns)}
        if "onnx" in args.engines:
            for name, folder in folders.items():
                export_onnx(patterns[name], folder)
        backbone = onnx_backbone(net, Path(tmp) / "backbone.onnx") if "onnx" in args.engines else Path()
        if args.channels_last:
            patterns = {name: p.to(memory_format=torch.channels_last) for name, p in patterns.items()}
        for threads in [cores if t == "all" else int(t) for t in args.threads.split(",")]:
            for engine in args.engines.split(","):
                for batch in [int(b) for b in args.batches.split(",")]:
                    rows += time_patterns(engine, patterns, folders, backbone, images, batch, threads, args)
            torch.set_num_threads(threads)
            latency[threads] = measure_latency(patterns["none fires (gates on)"], batch_size=1).to_dict()
    seconds = time.time() - started
    print(f"{args.arch} at {shape}, {defaults.head} heads, gates {defaults.gate}, CPU ({cores} cores), {args.clock} "
          f"clock{', channels-last' * args.channels_last}, load {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, {seconds:.0f} s")
    print(f"{'engine':7s}{'thr':>4s}{'batch':>6s}  {'pattern':24s}{'FLOPs x':>8s}{'routed x':>9s}{'ideal x':>8s}"
          f"{'overhead':>9s}{'(IQR)':>14s}{'of min':>7s}{'meas/FLOPs':>11s}{'routed ms':>10s}")
    for r in rows:
        print(f"{r['engine']:7s}{r['threads']:4d}{r['batch']:6d}  {r['pattern']:24s}{r['flops_speedup']:8.2f}"
              f"{r['measured_speedup']:9.2f}{r['ideal_speedup']:8.2f}{r['overhead']:9.1%}"
              f"{r['overhead_iqr'][0]:7.1%}..{r['overhead_iqr'][1]:<5.1%}{r['overhead_of_minima']:7.1%}"
              f"{r['measured_over_flops']:11.0%}{r['routed_ms']:10.3f}")
    flops = net.cost.tolist()
    for threads, lat in latency.items():
        print(f"exit cost, torch batch 1, {threads} thread(s): FLOPs " + " ".join(f"{c:.3f}" for c in flops)
              + " | time " + " ".join(f"{c:.3f}" for c in lat["relative"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "command": "python benchmarks/routing_speed.py " + " ".join(sys.argv[1:]),
            "arch": args.arch, "input_shape": shape, "head": head, "gate_config": str(defaults.gate),
            "clock": args.clock, "channels_last": args.channels_last,
            "mix_from": str(MIX_FROM.relative_to(Path(__file__).parent.parent)), "mix_fractions": fractions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cores": cores, "torch": torch.__version__,
                        "onnxruntime": ort.__version__, "load_before": load_before, "load_after": os.getloadavg(),
                        "seconds": seconds},
            "flops_cost": flops, "latency_cost_batch1": latency, "rows": rows,
        }
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
