"""FLOPs of every exit, counted with ``torch.utils.flop_counter`` at the real input size.

Attention is counted on its math path: ``nn.MultiheadAttention``'s inference fast path and
the fused CPU kernels of ``scaled_dot_product_attention`` are invisible to the counter (a
ViT-B/16 at 64 px would read 1.94 instead of 2.92 GFLOPs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from leenet.nn.gates import gate_features

FLOPS_CONVENTION = (
    "flops = 2 x multiply-adds of convolutions, linear layers and matmuls, counted by "
    "torch.utils.flop_counter at batch size 1; macs = flops / 2, the convention of "
    "torchvision's published _ops (GMACs)"
)


@dataclass(frozen=True)
class ExitCosts:
    """Absolute and relative FLOPs of each exit of an :class:`~leenet.model.ExitNet`.

    Attributes:
        backbone_flops: FLOPs of the plain backbone (all stages, no heads or gates).
        exit_flops: (E,) FLOPs to produce each exit: every stage up to it plus every head
            and gate evaluated on the way (the final exit pays for all early heads/gates).
        head_flops, gate_flops: (E-1,) FLOPs of the head and of the gate at each early exit
            (included in ``exit_flops``; a routed network skips what no exit needs, see
            :func:`routed_costs`).
        relative: (E,) ``exit_flops / backbone_flops``; the last entry is a bit above 1.
        relative_heads, relative_gates: (E-1,) ``head_flops`` and ``gate_flops`` over
            ``backbone_flops``.
    """

    backbone_flops: int
    exit_flops: tuple[int, ...]
    head_flops: tuple[int, ...] = ()
    gate_flops: tuple[int, ...] = ()

    @property
    def relative(self) -> Tensor:
        return torch.tensor(self.exit_flops, dtype=torch.float64) / self.backbone_flops

    @property
    def relative_heads(self) -> Tensor:
        return torch.tensor(self.head_flops, dtype=torch.float64) / self.backbone_flops

    @property
    def relative_gates(self) -> Tensor:
        return torch.tensor(self.gate_flops, dtype=torch.float64) / self.backbone_flops


def heads_needed(enabled: Tensor, chained: bool, final: bool = False) -> Tensor:
    """Which early heads a routed network must run, given which gates can fire.

    Args:
        enabled: (..., E-1) bool, whether each early exit's gate can ever let a sample go.
        chained: whether an exit reads the heads before it (gate history, a cascade or an
            ensemble): then a head also runs for the sake of any enabled gate after it.
        final: whether the final exit reads every early head (an ensemble over it).

    Returns:
        (..., E-1) bool. :func:`needed_heads` is the same rule on host lists.
    """
    if final:
        return torch.ones_like(enabled)
    if not chained or enabled.shape[-1] == 0:
        return enabled
    return enabled.flip(-1).int().cummax(-1).values.flip(-1).bool()  # any enabled at or after i


def needed_heads(enabled: list[bool], chained: bool, final: bool = False) -> list[bool]:
    """:func:`heads_needed` for one gate set on host lists (routing reads it once per batch)."""
    if final:
        return [True] * len(enabled)
    return [any(enabled[i:]) for i in range(len(enabled))] if chained else list(enabled)


def routed_costs(cost: Tensor, head_cost: Tensor, gate_cost: Tensor, enabled: Tensor, chained: bool,
                 final: bool = False) -> Tensor:
    """Relative cost of each exit when disabled gates and the heads no gate needs are skipped.

    Args:
        cost: (E,) relative cost of each exit with every head and gate run (``ExitNet.cost``).
        head_cost, gate_cost: (E-1,) relative cost of each early exit's head and gate.
        enabled: (..., E-1) bool, whether each gate can fire (a batch of gate sets is fine).
        chained, final: which heads later exits read (see :func:`heads_needed`).

    Returns:
        (..., E): ``cost`` less what is skipped on the way to each exit. With every gate
        disabled the final exit costs exactly the backbone (1.0), unless it reads the heads.
    """
    dtype = cost.dtype
    skipped = (head_cost.to(dtype) * (~heads_needed(enabled, chained, final)).to(dtype)
               + gate_cost.to(dtype) * (~enabled).to(dtype))  # (..., E-1)
    saved = F.pad(torch.cumsum(skipped, dim=-1), (0, 1))  # (..., E); the final exit ...
    saved[..., -1] = skipped.sum(-1)  # ... skips every unneeded head
    return cost - saved


def cumulative_costs(stage: Tensor, head: Tensor, gate: Tensor) -> Tensor:
    """(E,) cost of reaching each exit with every head and gate run: each stage up to it, and the
    head and gate of every early exit up to and with its own. One rule for FLOPs
    (:func:`exit_costs`) and for measured time (:class:`leenet.evaluate.latency.LatencyCosts`).

    Args:
        stage: (E,) each stage's cost; head, gate: (E-1,) each early head's and gate's.
    """
    return torch.cumsum(stage + F.pad(head + gate, (0, 1)), 0)


def single_exit_costs(cost: Tensor, head_cost: Tensor, gate_cost: Tensor) -> Tensor:
    """(E,) relative cost of a network truncated at each exit: its stages and its own head only."""
    extra = (head_cost + gate_cost).to(cost.dtype)
    before = F.pad(torch.cumsum(extra, 0), (1, 0))  # heads and gates of the exits before each
    return cost - before - F.pad(gate_cost.to(cost.dtype), (0, 1))  # ... and its own gate


@dataclass(frozen=True)
class CostModel:
    """An :class:`~leenet.model.ExitNet`'s relative costs, on the CPU: what pricing a policy needs.

    Attributes:
        cost: (E,) each exit with every head and gate run (``ExitNet.cost``).
        head_cost, gate_cost: (E-1,) each early head and gate.
        history: whether the gates read earlier exits' logits (see :func:`heads_needed`).
        linked: whether each exit's output reads the heads before it (a cascade or an ensemble).
        final_heads: whether the final exit reads every early head (an ensemble over it).
    """

    cost: Tensor
    head_cost: Tensor
    gate_cost: Tensor
    history: bool = False
    linked: bool = False
    final_heads: bool = False

    @classmethod
    def of(cls, net: nn.Module) -> CostModel:
        cpu = [t.detach().float().cpu() for t in (net.cost, net.head_cost, net.gate_cost)]
        return cls(*cpu, net.gate_config.history, net.linked, net.final_reads_heads)

    def clone(self) -> CostModel:
        """A copy that does not share the network's buffers."""
        return dataclasses.replace(self, cost=self.cost.clone(), head_cost=self.head_cost.clone(),
                                   gate_cost=self.gate_cost.clone())

    def to_dict(self) -> dict:
        return {"cost": self.cost.tolist(), "head_cost": self.head_cost.tolist(), "gate_cost": self.gate_cost.tolist()}

    def routed(self, enabled: Tensor) -> Tensor:
        """(..., E-1) bool enabled gates → (..., E) exit costs, what is not needed skipped."""
        return routed_costs(self.cost, self.head_cost, self.gate_cost, enabled, self.history or self.linked,
                            self.final_heads)

    def single_exits(self) -> Tensor:
        """(E,) cost of the network cut at each exit (:func:`single_exit_costs`). With linked
        exits the cut network still runs every head before its exit (no gate), and the final
        exit every head when it reads them."""
        if not self.linked:
            return single_exit_costs(self.cost, self.head_cost, self.gate_cost)
        gates = F.pad(torch.cumsum(self.gate_cost.to(self.cost.dtype), 0), (0, 1))  # up to and with each exit's own
        gates[-1] = self.gate_cost.sum()
        out = self.cost - gates
        if not self.final_heads:
            out[-1] = out[-1] - self.head_cost.sum()
        return out


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Attention on its plain math path, which the FLOP counter sees (the fast paths it does not)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(module: nn.Module, *inputs: Tensor) -> tuple[int, object]:
    """FLOPs of one call of ``module`` (attention on its math path) and its output."""
    counter = FlopCounterMode(display=False)
    with math_attention(), counter:
        out = module(*inputs)
    return int(counter.get_total_flops()), out


@torch.no_grad()
def exit_costs(net: nn.Module, example_input: Tensor) -> ExitCosts:
    """Count the FLOPs of each exit of ``net`` for one sample shaped like ``example_input``.

    Args:
        net: an :class:`~leenet.model.ExitNet`.
        example_input: (1, C, H, W) at the size the network will see.
    """
    was_training = net.training
    net.eval()
    try:
        stage_flops, head_list, gate_list = [], [], []
        h = example_input[:1]
        prev = None
        for i, stage in enumerate(net.stages):
            flops, h = count_flops(stage, h)
            stage_flops.append(flops)
            if i == net.num_exits - 1:
                break
            # a cascade link is part of its head: counted with it
            last = prev[:, -1] if i else None
            head_flops, logits = count_flops(lambda t, i=i, last=last: net.head_logits(i, t, last), h)
            if prev is None:
                prev = logits.new_empty(1, 0, logits.shape[-1])
            inputs = gate_features(logits, prev, net.heads[i].pool(h), net.gate_config)
            gate_flops, _ = count_flops(net.gates[i], inputs)
            head_list.append(head_flops)
            gate_list.append(gate_flops)
            prev = torch.cat([prev, logits[:, None]], dim=1)
    finally:
        net.train(was_training)
    as_int = [torch.tensor(v, dtype=torch.int64) for v in (stage_flops, head_list, gate_list)]
    cumulative = cumulative_costs(*as_int).tolist()
    return ExitCosts(backbone_flops=max(sum(stage_flops), 1), exit_flops=tuple(cumulative),
                     head_flops=tuple(head_list), gate_flops=tuple(gate_list))
