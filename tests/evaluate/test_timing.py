"""Wall-clock measurement: structure and sanity, not speed (machines here are shared)."""

from __future__ import annotations

import torch

from leenet.evaluate.timing import PlainBackbone, interleaved_seconds, measure_wall_clock, median_seconds
from leenet.nn.attach import attach_exits

from conftest import INPUT_SHAPE, NUM_CLASSES


def test_median_seconds_interleaves_and_reports_each() -> None:
    calls: list[str] = []
    result = median_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            repeats=3, warmup=1, device=torch.device("cpu"))
    assert set(result) == {"a", "b"} and all(t >= 0 for t in result.values())
    assert calls == ["a", "b"] * 4, "the functions must take turns"


def test_measure_wall_clock(tiny_stages, tiny_input) -> None:
    net = attach_exits(tiny_stages, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES).eval()
    images = tiny_input[:20]
    result = measure_wall_clock(net, images, batch_size=16, latency_samples=4, repeats=2, warmup=1)
    for key in ("backbone_throughput", "leenet_throughput", "backbone_latency_ms", "leenet_latency_ms"):
        assert result[key] > 0, key
    assert result["throughput_batch"] == 16 and result["latency_samples"] == 4
    assert result["measured_speedup"] == result["leenet_throughput"] / result["backbone_throughput"]
    with torch.no_grad():
        assert torch.equal(PlainBackbone(net)(images), net.forward_all(images).logits[:, -1])


def test_median_seconds_reads_the_given_clock() -> None:
    ticks = iter(range(100))
    result = median_seconds({"a": lambda: None}, repeats=3, warmup=1, device=torch.device("cpu"),
                            clock=lambda: float(next(ticks)))
    assert result == {"a": 1.0}  # one tick per timed call, not the wall clock


def test_interleaved_seconds_keeps_every_round_and_can_alternate() -> None:
    calls: list[str] = []
    times = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                repeats=3, warmup=0, device=torch.device("cpu"), alternate=True)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
