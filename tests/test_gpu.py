"""CUDA checks: the routed network, the pipeline and the timers on a GPU.

Marked ``gpu`` and skipped without a CUDA device, so CI (no GPU) never runs them; on a
machine with one, run ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_cli import FAST as CLI_FAST
from test_model import assert_routing_matches
from torch import Tensor

from leenet.checkpoint import load_checkpoint
from leenet.cli import main
from leenet.config import GateConfig
from leenet.evaluate.timing import measure_wall_clock
from leenet.nn.model import ExitNet

from conftest import INPUT_SHAPE, NUM_CLASSES, explicit_stages, make_tiny_cnn, mix_exits_

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FAST = [arg for arg in CLI_FAST if arg != "--no-timing"]  # the CLI tests' settings, with the wall clock


@pytest.fixture
def exact_cuda():
    """Full fp32 on the GPU (no TF32 convolutions or matrix products) for the duration of a test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _mixed_net(tiny_input: Tensor) -> ExitNet:
    net = ExitNet.from_stages(explicit_stages(make_tiny_cnn()), num_classes=NUM_CLASSES,
                              example_input=torch.zeros(1, *INPUT_SHAPE), head="sdn",
                              gate_config=GateConfig(hidden=8, history=True, pooled=True, classes=True))
    return mix_exits_(net.eval(), tiny_input, 0.5)


def test_routing_on_cuda_matches_compute_all_and_cpu(tiny_input: Tensor, exact_cuda) -> None:
    net = _mixed_net(tiny_input)
    with torch.no_grad():
        cpu_logits, cpu_exits = net(tiny_input)
    gpu = copy.deepcopy(net).cuda()
    x = tiny_input.cuda()
    for batch in (1, 7, 64):
        assert_routing_matches(gpu, x[:batch])
    with torch.no_grad():
        logits, exits = gpu(x)
    assert logits.device.type == "cuda" and exits.device.type == "cuda"
    assert torch.equal(exits.cpu(), cpu_exits), "a sample took another exit on the GPU"
    assert set(exits.tolist()) == set(range(net.num_exits)), "the batch should use every exit"
    assert torch.allclose(logits.cpu(), cpu_logits, atol=1e-4, rtol=1e-4)


def test_wall_clock_on_cuda(tiny_input: Tensor) -> None:
    net = _mixed_net(tiny_input).cuda()
    clock = measure_wall_clock(net, tiny_input.cuda(), batch_size=64, latency_samples=8, repeats=3, warmup=1)
    assert clock["device"].startswith("cuda")
    for key in ("backbone_throughput", "leenet_throughput", "measured_speedup", "latency_speedup"):
        assert clock[key] > 0, key


def test_run_on_cuda_then_reload_on_cpu(tmp_path: Path, exact_cuda) -> None:
    out = tmp_path / "digits_cuda"
    assert main(["run", "--out", str(out), "--device", "cuda", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["routed_check"]["matches_simulation"] is True
    assert results["wall_clock"]["device"].startswith("cuda")
    assert 0.5 < results["selected"]["accuracy"] <= 1.0
    net = load_checkpoint(out / "model.pt")  # trained on the GPU, served on a CPU
    assert next(net.parameters()).device.type == "cpu"
    logits, exits = net(torch.randn(16, 1, 8, 8))
    assert logits.shape == (16, 10) and exits.max() < net.num_exits
    gpu_net = load_checkpoint(out / "model.pt", map_location="cuda")
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(gpu_net(x.cuda())[1].cpu(), net(x)[1])
