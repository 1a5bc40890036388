"""Train (or reuse) the Fashion-MNIST backbone of the LEENet benchmark.

``python benchmarks/fmnist_backbone.py`` trains ``small_resnet`` on the training split
(the 10k calibration samples held out) and writes its state dict to
``runs/fmnist_backbone_w24.pt``; :mod:`benchmarks.fashion_mnist` reuses that file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from leenet.backbones import SmallResNet
from leenet.data import Splits, load_dataset, make_loader
from leenet.train import train_classifier

CALIB_SIZE = 10_000
DEFAULTS = dict(width=24, blocks=2, epochs=24, lr=0.1, weight_decay=5e-4, batch_size=128, precision="bf16")


@torch.no_grad()
def accuracy(model: nn.Module, ds, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a split, in eval mode."""
    model.eval()
    right = total = 0
    for x, y in make_loader(ds, batch_size, train=False):
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / max(total, 1)


def train_backbone(splits: Splits, *, width: int, blocks: int, epochs: int, lr: float, weight_decay: float,
                   batch_size: int, precision: str = "fp32", seed: int = 0) -> tuple[nn.Module, dict]:
    """Train a SmallResNet on ``splits.train`` with SGD one-cycle; returns model and a log."""
    torch.manual_seed(seed)
    model = SmallResNet(splits.spec.num_classes, splits.spec.in_channels, width=width, blocks=blocks)
    loader = make_loader(splits.train, batch_size, train=True, seed=seed)
    start = time.time()
    losses = train_classifier(model, lambda: loader, steps_per_epoch=len(loader), epochs=epochs,
                              lr=lr, weight_decay=weight_decay, progress=True, precision=precision)
    log = dict(width=width, blocks=blocks, epochs=epochs, lr=lr, weight_decay=weight_decay,
               batch_size=batch_size, precision=precision, threads=torch.get_num_threads(),
               train_seconds=time.time() - start, epoch_losses=losses,
               test_accuracy=accuracy(model, splits.test), calib_accuracy=accuracy(model, splits.calib))
    return model, log


def main() -> None:
    """Command line: train the backbone and write it (and a JSON log next to it)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    splits = load_dataset("fashion-mnist", calib_size=CALIB_SIZE, seed=0)
    model, log = train_backbone(splits, **{k: getattr(args, k) for k in DEFAULTS})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
