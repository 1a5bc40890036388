"""Shared fixtures: a tiny CNN backbone, as a traceable module and as explicit stages.

Also helpers the test modules import (``from conftest import ...``): the gate inputs of a
batch, and :func:`mix_exits_`, which sets random gates so that exits are mixed.

Everything is small (16×16 inputs, a few channels) so the whole suite runs in seconds on
one CPU core. BatchNorm layers get random running statistics and every module is in eval
mode, so BatchNorm is not an identity and row-independence of the routed pass is tested.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from leenet.nn.gates import gate_features
from leenet.nn.model import ExitNet

NUM_CLASSES = 5
INPUT_SHAPE = (3, 16, 16)
EXIT_POINTS = ["block1", "block2", "block3"]


class TinyCNN(nn.Module):
    """Three conv blocks, global pool and a linear classifier; traceable by ``torch.fx``.

    Shapes for a (B, 3, 16, 16) input: block1 → (B, 8, 16, 16), block2 → (B, 16, 8, 8),
    block3 → (B, 16, 4, 4), logits (B, NUM_CLASSES).
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(h), 1))


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def make_tiny_cnn(seed: int = 0) -> TinyCNN:
    """A TinyCNN with seeded weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_batchnorm_(TinyCNN(), seed)


def explicit_stages(model: TinyCNN) -> list[nn.Module]:
    """The TinyCNN cut by hand after each block; the stages share the model's modules."""
    return [model.block1, model.block2, model.block3, nn.Sequential(model.pool, nn.Flatten(1), model.fc)]


def gate_inputs_of(net: ExitNet, x: Tensor) -> list[Tensor]:
    """The input of every gate for batch ``x``, as the compute-all path builds them."""
    with torch.no_grad():
        out = net.forward_all(x)
    return [
        gate_features(out.logits[:, i], out.logits[:, :i], out.pooled[i], net.gate_config)
        for i in range(net.num_exits - 1)
    ]


def mix_exits_(net: ExitNet, x: Tensor, threshold: float, seed: int = 0) -> ExitNet:
    """Random gates that let about half of the samples still running on ``x`` out at each gate.

    Each gate's input statistics are fit on ``x`` and its weights drawn at random; then, gate
    by gate, its output bias is moved so that ``threshold`` falls halfway between the two
    middle scores of the samples that reach it. No sample sits at the threshold, so
    rounding differences between the two paths cannot flip a decision.
    """
    gen = torch.Generator().manual_seed(seed)
    net.threshold = threshold
    reaching = torch.ones(len(x), dtype=torch.bool)
    with torch.no_grad():
        for gate, inputs in zip(net.gates, gate_inputs_of(net, x)):
            gate.fit_input_stats(inputs)
            for layer in gate.mlp:
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
            scores = gate.logit(inputs)
            active = scores[reaching].sort().values
            mid = len(active) // 2
            centre = (active[mid - 1] + active[mid]) / 2 if len(active) > 1 else scores.max() + 1.0
            gate.mlp[-1].bias += math.log(threshold / (1 - threshold)) - centre
            reaching &= gate(inputs) < threshold
    return net.eval()


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    """A traceable TinyCNN in eval mode."""
    return make_tiny_cnn()


@pytest.fixture
def tiny_stages(tiny_cnn: TinyCNN) -> list[nn.Module]:
    """The TinyCNN as four explicit stages (three early exits)."""
    return explicit_stages(tiny_cnn)


@pytest.fixture
def tiny_input() -> Tensor:
    """A (64, 3, 16, 16) batch of random images."""
    return torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


class HostSyncs(TorchDispatchMode):
    """Counts the operators that make a GPU wait for the host: reading a value back, or
    sizing an output from data (``nonzero``, boolean-mask indexing)."""

    SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func.overloadpacket) in self.SYNCING
        return func(*args, **(kwargs or {}))
