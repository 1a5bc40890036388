"""Which exit-head shape to measure in full ("wider or deeper early heads"): a quick
pilot on the Fashion-MNIST benchmark's frozen backbone, judged on the calibration split only.

The benchmark's SDN heads fit their training data no better than held-out data (85.7 % on
training images against 85.6 % on calibration at ``layer1.0``): they are short of capacity,
not of data. This pilot trains each candidate head shape on the frozen features of a fixed
subset of the training split (no augmentation, so the features are computed once) and
reports its calibration accuracy and its FLOPs as a share of the backbone's, per exit:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/head_capacity.py      # ~10 min on 2 cores

It writes ``benchmarks/results/head_capacity.json``. The shape chosen from it is then trained
and evaluated in full, 3 seeds, by ``benchmarks/better_exits.py``; the test split is not read here.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import EXITS, cached_backbone_stages  # noqa: E402

from leenet.data import make_loader  # noqa: E402
from leenet.nn.cost import count_flops  # noqa: E402
from leenet.nn.heads import ConvHead, DeepConvHead  # noqa: E402

BACKBONE = Path("runs/fmnist_backbone_w24.pt")
# (name, head class, width, extra stride-1 blocks at the end): width None = the SDN rule (input
# channels clamped to [32, 256]); "deep+1" asks whether depth past the 4×4 map still pays.
SHAPES = (("sdn", ConvHead, None, 0), ("wide", ConvHead, 64, 0), ("deep", DeepConvHead, None, 0),
          ("deep-wide", DeepConvHead, 64, 0), ("deep+1", DeepConvHead, None, 1))
EPOCHS, BATCH, LR, WEIGHT_DECAY = 6, 128, 2e-3, 1e-4  # as the benchmark's head training


def features(stages, ds, limit: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every early exit's frozen features (fp16 to halve the memory) and the labels, first ``limit`` samples."""
    feats, labels, seen = [[] for _ in EXITS], [], 0
    with torch.no_grad():
        for x, y in make_loader(ds, 500, train=False):
            h = x
            for i in range(len(EXITS)):
                h = stages[i](h)
                feats[i].append(h.half())
            labels.append(y)
            seen += len(y)
            if limit is not None and seen >= limit:
                break
    return [torch.cat(f)[:limit] for f in feats], torch.cat(labels)[:limit]


def fit(head: ConvHead, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """The benchmark's head recipe (AdamW, cosine schedule) on cached features."""
    steps = EPOCHS * (len(y) // BATCH)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(y), generator=generator)
        for k in range(len(y) // BATCH):
            idx = order[k * BATCH:(k + 1) * BATCH]
            loss = F.cross_entropy(head(x[idx].float()), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    head.eval()


def accuracy(head: ConvHead, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([head(b.float()).argmax(-1) for b in x.split(1000)]).eq(y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=20000, help="training subset (default: 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/head_capacity.json"))
    args = parser.parse_args()
    splits, stages = cached_backbone_stages(BACKBONE)
    backbone_flops, _ = count_flops(torch.nn.Sequential(*stages), torch.zeros(1, 1, 28, 28))
    train_x, train_y = features(stages, splits.train, args.train_samples)
    calib_x, calib_y = features(stages, splits.calib, None)
    rows = []
    for name, kind, width, extra in SHAPES:
        for i, exit_name in enumerate(EXITS):
            torch.manual_seed(args.seed)
            shape = train_x[i].shape[1:]
            strides = kind.block_strides(shape[1]) + [1] * extra
            head = ConvHead(shape, 10, width=width, strides=strides)  # the class's blocks, in one builder
            start = time.perf_counter()
            fit(head, train_x[i], train_y, args.seed)
            flops, _ = count_flops(head, calib_x[i][:1].float())
            rows.append({"shape": name, "width": head.fc.in_features // 2, "strides": strides, "exit": exit_name,
                         "calib_accuracy": accuracy(head, calib_x[i], calib_y),
                         "train_accuracy": accuracy(head, train_x[i], train_y),
                         "head_cost": flops / backbone_flops, "seconds": time.perf_counter() - start})
            print(f"{name:10s} {exit_name:9s} calib {100 * rows[-1]['calib_accuracy']:.2f} % "
                  f"train {100 * rows[-1]['train_accuracy']:.2f} % head cost {rows[-1]['head_cost']:.4f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "train_samples": len(train_y), "calib_samples": len(calib_y), "epochs": EPOCHS,
        "seed": args.seed, "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "command": "python " + " ".join(sys.argv),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
