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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from leenet.build import attach_exits
from leenet.timing import measure_wall_clock
from leenet.zoo import build_backbone, get_backbone_info


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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_backbone(args.arch, num_classes=10, in_channels=args.channels).eval()
    shape = (args.channels, args.image_size, args.image_size)
    net = attach_exits(model, get_backbone_info(args.arch).default_exits, input_shape=shape, num_classes=10)
    images = torch.randn(256, *shape)
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
    print(f"{args.arch} at {shape}, torch threads {torch.get_num_threads()}")
    print(f"{'everyone exits at':18s}{'cost':>7s}{'FLOPs x':>9s}{'batch256 x':>12s}{'batch1 x':>10s}{'measured/FLOPs':>16s}")
    for r in rows:
        print(f"{r['exit']:18s}{r['cost']:7.3f}{r['flops_speedup']:9.2f}{r['measured_speedup']:12.2f}"
              f"{r['latency_speedup']:10.2f}{r['efficiency']:16.0%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"arch": args.arch, "input_shape": shape, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
