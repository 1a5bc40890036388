"""Shared fixtures: a tiny CNN backbone, as a traceable module and as explicit stages.

Also helpers the test modules import (``from conftest import ...``): the gate inputs of a
batch, :func:`mix_exits_`, which sets random gates so that exits are mixed, and
:func:`assert_routes_like`, the one check that a router (batched, one by one, onnxruntime, the
files' records) routes like the network's compute-all pass, with the tolerance the runtime documents.

Everything is small (16×16 inputs, a few channels) so the whole suite runs in seconds on
one CPU core. BatchNorm layers get random running statistics and every module is in eval
mode, so BatchNorm is not an identity and row-independence of the routed pass is tested.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from leenet.nn.gates import gate_features
from leenet.nn.model import ExitNet, ExitOutputs
from leenet.policy.simulate import first_exit

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
    by gate, its output bias is moved so that ``threshold`` falls in the middle of the widest
    gap between neighbouring scores among the middle half of the samples that reach it. No
    sample sits near the threshold, so the differences between two routers (another engine,
    batch size or instruction set) cannot flip a decision: these random gates standardize
    inputs of small spread, and their probabilities differ by up to 2e-3 between torch and
    onnxruntime while the logits agree within 2e-7 (measured on an Intel Xeon with AMX), so the
    gap between the two middle scores alone, once 3e-5, is not enough.
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
            centre = scores.max() + 1.0  # one sample or none reaches: nobody leaves
            if len(active) > 1:
                lo, hi = len(active) // 4, max(len(active) * 3 // 4, len(active) // 4 + 1)
                k = lo + int((active[lo + 1:hi + 1] - active[lo:hi]).argmax())  # the widest gap in the middle half
                centre = (active[k] + active[k + 1]) / 2
            gate.mlp[-1].bias += math.log(threshold / (1 - threshold)) - centre
            reaching &= gate(inputs) < threshold
    return net.eval()


# A gate probability this close to the threshold may fall on either side of it in another engine,
# at another batch size or on another instruction set: onnxruntime on an Intel Xeon with AMX put a
# torch probability of 0.500033 below a threshold of 0.5, and the gate probabilities of the test
# networks differ by up to 2e-3 between the two engines (see mix_exits_).
TIE_TOL = 1e-3


def assert_routes_like(reference: ExitOutputs, threshold: float, exit_index, logits, *, atol: float = 1e-5,
                       rtol: float = 0.0, tie_tol: float = TIE_TOL) -> np.ndarray:
    """Check a router's decisions against the compute-all pass ``reference`` of the same batch.

    A sample leaves at the first exit whose gate probability reaches ``threshold``. Every
    sample must leave where ``reference`` says, except a tie: where the exits differ, the gate
    at which the two part (the earlier of the two exits) must have a reference probability
    within ``tie_tol`` of the threshold; any other difference is a routing error. Whichever
    exit a sample took, its logits must be that exit's (within ``atol`` + ``rtol``) and so its class,
    unless the exit's two best classes are themselves within ``2 * atol`` of each other.

    Args:
        reference: ``net.forward_all(batch)``: logits (B, E, C), gate_p (B, E-1).
        threshold: the network's exit threshold.
        exit_index: (B,) exits the router chose (tensor, array or list).
        logits: (B, C) logits the router returned, or (B,) class indices (classes checked only).
        atol: how far the router's logits may be from the reference's.
        rtol: and how far relative to the reference's.
        tie_tol: how close to the threshold a probability must be to go either way.

    Returns:
        (B,) the router's exits, as an int64 array.
    """
    gate_p, all_logits = reference.gate_p.numpy(), reference.logits.numpy()
    want = first_exit(reference.gate_p >= threshold).numpy()
    got = np.asarray(exit_index, dtype=np.int64)
    assert got.shape == want.shape, f"{got.shape} exits for a batch of {want.shape[0]}"
    rows = np.arange(len(got))
    parted = np.minimum(got, want)  # the first gate where the two decisions differ
    near = np.zeros(len(got), dtype=bool)  # a network without early exits has no gate to tie at
    if gate_p.shape[1]:
        near = np.abs(gate_p[rows, np.minimum(parted, gate_p.shape[1] - 1)] - threshold) <= tie_tol
    wrong = np.flatnonzero((got != want) & ~near)
    assert not len(wrong), "routed differently away from the threshold: " + "; ".join(
        f"sample {k} left at {got[k]}, not {want[k]} (gate probabilities {gate_p[k].round(6).tolist()})"
        for k in wrong[:5])
    taken = all_logits[rows, got]  # (B, C): the reference's logits at the exit each sample took
    top2 = np.sort(taken, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * atol
    given = np.asarray(logits)
    classes = given if given.ndim == 1 else given.argmax(1)
    mismatch = np.flatnonzero(clear & (classes != taken.argmax(1)))
    assert not len(mismatch), f"samples {mismatch[:5].tolist()} got another class than their exit's"
    if given.ndim == 2:
        np.testing.assert_allclose(given, taken, rtol=rtol, atol=atol)
    return got


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
