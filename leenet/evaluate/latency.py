"""A cost that is time: each stage, head and gate of an ExitNet timed on a device.

FLOPs price a head's convolution and a gate's 30 small operators by their arithmetic; a
CPU at batch 1 or a GPU at any batch pays per operator, so a gate with no FLOPs to speak of
can cost a tenth of a stage. :func:`measure_latency` times every part where it runs (warm-up,
repeats, median) and returns relative costs in the form of the FLOPs ones
(:class:`~leenet.nn.cost.ExitCosts`), so gate fitting, budgets and the report can price
exits in time instead (:func:`use_costs_`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from leenet.errors import LeenetError
from leenet.evaluate.timing import PlainBackbone
from leenet.nn.cost import cumulative_costs
from leenet.nn.model import ExitNet


@dataclass(frozen=True)
class LatencyCosts:
    """Measured seconds of each part of an :class:`~leenet.nn.model.ExitNet`, and their relative costs.

    Attributes:
        device: where it was measured (``"cpu"``, ``"cuda:0"``).
        batch_size: images per call.
        threads: torch's intra-op threads during the measurement.
        backbone_seconds: the plain backbone (every stage back to back), timed whole.
        stage_seconds: (E,) each stage on its own.
        head_seconds: (E-1,) each early exit's head.
        gate_seconds: (E-1,) each early exit's gate: its features, MLP and exit decision.
    """

    device: str
    batch_size: int
    threads: int
    backbone_seconds: float
    stage_seconds: tuple[float, ...]
    head_seconds: tuple[float, ...]
    gate_seconds: tuple[float, ...]

    @property
    def _stage_scale(self) -> float:
        # stages timed one by one sum to a bit more or less than the backbone timed whole:
        # scaled to it, so a network with every gate off costs exactly 1.0
        return self.backbone_seconds / max(sum(self.stage_seconds), 1e-12)

    @property
    def relative(self) -> Tensor:
        """(E,) like :attr:`ExitCosts.relative`: every stage, head and gate up to each exit, over the backbone."""
        stage, head, gate = (torch.tensor(v, dtype=torch.float64)
                             for v in (self.stage_seconds, self.head_seconds, self.gate_seconds))
        return cumulative_costs(stage * self._stage_scale, head, gate) / self.backbone_seconds

    @property
    def relative_heads(self) -> Tensor:
        """(E-1,) each early head over the backbone."""
        return torch.tensor(self.head_seconds, dtype=torch.float64) / self.backbone_seconds

    @property
    def relative_gates(self) -> Tensor:
        """(E-1,) each early gate over the backbone."""
        return torch.tensor(self.gate_seconds, dtype=torch.float64) / self.backbone_seconds

    def to_dict(self) -> dict:
        """Plain JSON form: the seconds and the relative costs."""
        return {**asdict(self), "relative": self.relative.tolist(), "relative_heads": self.relative_heads.tolist(),
                "relative_gates": self.relative_gates.tolist()}


@torch.inference_mode()
def measure_latency(net: ExitNet, *, batch_size: int = 1, device: torch.device | str | None = None,
                    images: Tensor | None = None, repeats: int = 100, warmup: int = 10) -> LatencyCosts:
    """Time every stage, head and gate of ``net`` at ``batch_size`` (median of ``repeats``).

    Each round times the whole backbone, its stages one by one, and a walk in routing order
    (stage, head, gate, next stage) that times each part where it runs, so the caches are as
    warm or cold as in use; an exit is charged its head, its gate and the time by which the
    next stage runs slower after them. The rounds interleave all of it, so load from a
    neighbour slows every part alike. Not included: the fixed cost of a routed call (input
    checks, reading the enabled gates; about 25 µs on this project's CPU), paid once per
    batch whatever the exit.

    Args:
        net: the network; measured in eval mode on ``device`` (default: where its weights are).
        batch_size: images per call (1: latency; the decision threshold does not matter).
        images: (N >= batch_size, C, H, W) inputs; default: standard normal ones of the
            network's input shape (time does not depend on the values for these layers).
        repeats, warmup: timed and untimed rounds.
    """
    param = next(net.parameters())
    device = torch.device(device) if device is not None else param.device
    was_training = net.training
    net.eval().to(device)
    try:
        if images is None:
            if net.input_shape is None:
                raise LeenetError("the network has no input shape: pass images of the size it will see")
            images = torch.randn(batch_size, *net.input_shape, generator=torch.Generator().manual_seed(0))
        x = images[:batch_size].to(device=device, dtype=param.dtype)
        plain = PlainBackbone(net)
        times: dict[str, list[float]] = {}
        for r in range(warmup + repeats):
            start = _now(device)
            plain(x)
            round_times = {"backbone": _now(device) - start, **_walk(net, x, device, exits=False),
                           **_walk(net, x, device, exits=True)}
            if r >= warmup:
                for name, t in round_times.items():
                    times.setdefault(name, []).append(t)
        sec = {name: statistics.median(t) for name, t in times.items()}
    finally:
        net.train(was_training)
    early = range(net.num_exits - 1)
    # An exit also slows the next stage down (its head and gate evict the stage's weights
    # and activations from the caches): that slowdown is part of what the exit costs.
    slowdown = [max(0.0, sec[f"stage{i + 1}+exits"] - sec[f"stage{i + 1}"]) for i in early]
    return LatencyCosts(
        device=str(device), batch_size=int(x.shape[0]), threads=torch.get_num_threads(),
        backbone_seconds=sec["backbone"], stage_seconds=tuple(sec[f"stage{i}"] for i in range(net.num_exits)),
        head_seconds=tuple(sec[f"head{i}"] for i in early),
        gate_seconds=tuple(sec[f"gate{i}"] + slowdown[i] for i in early))


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _walk(net: ExitNet, x: Tensor, device: torch.device, *, exits: bool) -> dict[str, float]:
    """One pass in routing order, nobody leaving: seconds of each stage (``stage{i}``), and
    with ``exits`` of each head and gate too (the stages then ``stage{i}+exits``). A head's time
    includes its cascade link and its exit's ensemble, as routing runs them."""
    out: dict[str, float] = {}
    h, prev, raw = x, None, None
    for i, stage in enumerate(net.stages):
        start = _now(device)
        h = stage(h)
        out[f"stage{i}+exits" if exits else f"stage{i}"] = _now(device) - start
        if i == net.num_exits - 1 or not exits:
            continue
        start = _now(device)
        logits, raw = net.exit_output(i, h, raw)
        out[f"head{i}"] = _now(device) - start
        start = _now(device)
        prev = logits.new_empty(logits.shape[0], 0, logits.shape[-1]) if prev is None else prev
        leave = torch.sigmoid(net.gate_logit(i, h, logits, prev)) >= net.threshold
        _ = bool(leave) if leave.numel() == 1 else int(leave.sum())  # the decision, read on the host
        if net.gate_config.history:
            prev = torch.cat([prev, logits[:, None]], dim=1)
        out[f"gate{i}"] = _now(device) - start
    return out


@torch.no_grad()
def use_costs_(net: ExitNet, costs: LatencyCosts) -> ExitNet:
    """Price ``net``'s exits by ``costs`` (its ``cost``, ``head_cost`` and ``gate_cost`` buffers).

    ``backbone_flops`` is left alone: it stays the absolute FLOPs of the plain backbone.
    """
    if len(costs.stage_seconds) != net.num_exits:
        raise LeenetError(f"latency costs measured on a network of {len(costs.stage_seconds)} exits cannot price "
                          f"one of {net.num_exits}: measure this network with measure_latency")
    net.cost.copy_(costs.relative.to(net.cost))
    net.head_cost.copy_(costs.relative_heads.to(net.head_cost))
    net.gate_cost.copy_(costs.relative_gates.to(net.gate_cost))
    return net
