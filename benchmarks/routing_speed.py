"""How close does routed inference come to its FLOPs speed-up?

Builds an ExitNet on a registered backbone (random weights: speed does not depend on them),
forces every sample out at exit k (gate biases set to always/never fire) for each k (at the
final exit once with every gate on and never firing, once with the gates switched off), and
measures throughput (batch 256) and latency (batch 1) of the routed network against the
plain backbone on the same inputs, after warm-up, median of repeats. The FLOPs ratio
``1 / cost[k]`` is the speed-up a router could reach; ``measured / flops`` says how much of
it survives the routing overhead (gate features, index bookkeeping, smaller batches).

Usage::

    python benchmarks/routing_speed.py --arch small_resnet --image-size 28 --channels 1
    python benchmarks/routing_speed.py --device cuda --arch resnet50 --image-size 224 --channels 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from leenet.backbones import build_backbone, get_backbone_info
from leenet.evaluate import measure_wall_clock
from leenet.nn import attach_exits


def force_exit(net, k: int) -> None:
    """Make gate k always fire and every earlier gate never fire."""
    for i, gate in enumerate(net.gates):
        last = gate.mlp[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, 50.0 if i == k else -50.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_resnet")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_backbone(args.arch, num_classes=10, in_channels=args.channels).eval()
    shape = (args.channels, args.image_size, args.image_size)
    device = torch.device(args.device)
    net = attach_exits(model, get_backbone_info(args.arch).default_exits, input_shape=shape, num_classes=10).to(device)
    images = torch.randn(256, *shape, device=device)
    rows = []
    settings = [(k, net.exit_names[k]) for k in range(net.num_exits - 1)]
    settings += [(net.num_exits - 1, "final, gates on"), (net.num_exits - 1, "final, gates off")]
    for k, label in settings:
        if k < net.num_exits - 1:
            force_exit(net, k)
        else:
            for gate in net.gates:
                torch.nn.init.constant_(gate.mlp[-1].bias, -50.0)
                gate.enabled.fill_(label.endswith("on"))  # off: no head or gate runs, the plain backbone
        clock = measure_wall_clock(net.eval(), images, repeats=args.repeats)
        assert (net(images[:8])[1] == k).all()
        cost = float(net.routed_cost()[k])
        flops = 1.0 / cost
        rows.append({"exit": label, "cost": cost, "flops_speedup": flops,
                     "measured_speedup": clock["measured_speedup"], "latency_speedup": clock["latency_speedup"],
                     "efficiency": clock["measured_speedup"] / flops})
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"{args.arch} at {shape}, {where}")
    print(f"{'everyone exits at':18s}{'cost':>7s}{'FLOPs x':>9s}{'batch256 x':>12s}{'batch1 x':>10s}{'measured/FLOPs':>16s}")
    for r in rows:
        print(f"{r['exit']:18s}{r['cost']:7.3f}{r['flops_speedup']:9.2f}{r['measured_speedup']:12.2f}"
              f"{r['latency_speedup']:10.2f}{r['efficiency']:16.0%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"arch": args.arch, "input_shape": shape, "device": where, "rows": rows}
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
