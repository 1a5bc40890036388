"""Cost of one per-epoch checkpoint of the Fashion-MNIST ``small_resnet`` as ``leenet run`` writes it
(model + optimizer + schedule + RNG + loader position; temporary file, fsync, rename)::

    python benchmarks/checkpoint_cost.py      # compare the median with one training epoch's seconds
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from leenet import build_backbone, load_dataset, make_loader
from leenet.distributed import Processes
from leenet.resume import EpochCheckpoint, RunState


def main() -> None:
    torch.set_num_threads(1)
    model = build_backbone("small_resnet", num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=1000, pct_start=0.15)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # the momentum buffers exist, as after any epoch
    schedule.step()
    loader = make_loader(load_dataset("digits").train, 128, train=True)
    out = Path(tempfile.mkdtemp())
    checkpoint = EpochCheckpoint(RunState(out, {"seed": 0}, Processes(), resume=False), "backbone-epoch", loader, 24)
    seconds = []
    for epoch in range(20):
        start = time.perf_counter()
        checkpoint.save({"epoch": epoch + 1, "history": [1.0] * epoch, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})
        seconds.append(time.perf_counter() - start)
    size = (out / "stages" / "backbone-epoch.pt").stat().st_size
    print(f"file {size / 1e6:.2f} MB; save median {statistics.median(seconds) * 1e3:.1f} ms, "
          f"max {max(seconds) * 1e3:.1f} ms over {len(seconds)} saves")


if __name__ == "__main__":
    main()
