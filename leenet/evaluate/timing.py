"""Wall-clock throughput and latency of the routed network against the plain backbone."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from leenet.nn.model import ExitNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                   device: torch.device, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median wall time of each ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    The functions take turns within each repeat, so a noisy neighbour on a shared machine
    slows all of them alike and their ratios stay meaningful (:func:`interleaved_seconds`).
    """
    times = interleaved_seconds(fns, repeats=repeats, warmup=warmup, device=device, clock=clock)
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_seconds(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                        device: torch.device, clock: Callable[[], float] = time.perf_counter,
                        alternate: bool = False) -> dict[str, list[float]]:
    """Every timing of each ``fn()``: ``repeats`` rounds in which the functions take turns.

    The ratio of two functions timed one after the other in the same round, its median over
    rounds, is the steadiest comparison on a loaded machine; ``alternate`` reverses the
    order every other round, so neither always runs first. ``clock=time.thread_time``
    counts only this thread's CPU time: it ignores the time the thread waits for a core,
    which is right for one-thread CPU work only.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in (reversed(fns.items()) if alternate and r % 2 else fns.items()):
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return times


class PlainBackbone(nn.Module):
    """The stages of an :class:`ExitNet` run back to back: the original backbone."""

    def __init__(self, net: ExitNet) -> None:
        super().__init__()
        self.stages = net.stages

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


@torch.inference_mode()
def measure_wall_clock(
    net: ExitNet, images: Tensor, *, batch_size: int = 256, latency_samples: int = 64,
    repeats: int = 5, warmup: int = 2,
) -> dict:
    """Throughput (images/s at ``batch_size``) and per-image latency (batch 1), median of repeats.

    Both networks see the same real images, so the routed network's exits are the ones it
    takes in use. ``images`` (N, C, H, W) must already be on the network's device.

    Returns:
        A dict with throughputs, latencies in milliseconds, and the measured speed-ups.
    """
    net.eval()
    device = images.device
    plain = PlainBackbone(net)
    batch = images[:batch_size]
    singles = images[:latency_samples].split(1)
    result = {"device": str(device), "throughput_batch": len(batch), "latency_samples": len(singles)}
    models = {"backbone": plain, "leenet": net}
    batch_s = median_seconds({n: (lambda m=m: m(batch)) for n, m in models.items()},
                             repeats=repeats, warmup=warmup, device=device)
    single_s = median_seconds({n: (lambda m=m: [m(x) for x in singles]) for n, m in models.items()},
                              repeats=max(1, repeats // 2), warmup=1, device=device)
    for name in models:
        result[f"{name}_throughput"] = len(batch) / batch_s[name]
        result[f"{name}_latency_ms"] = 1000.0 * single_s[name] / len(singles)
    result["measured_speedup"] = result["leenet_throughput"] / result["backbone_throughput"]
    result["latency_speedup"] = result["backbone_latency_ms"] / result["leenet_latency_ms"]
    return result
