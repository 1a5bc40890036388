"""FLOPs of every exit, counted with ``torch.utils.flop_counter`` at the real input size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from leenet.heads import gate_features, global_pool

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
        relative: (E,) ``exit_flops / backbone_flops``; the last entry is a bit above 1.
    """

    backbone_flops: int
    exit_flops: tuple[int, ...]

    @property
    def relative(self) -> Tensor:
        return torch.tensor(self.exit_flops, dtype=torch.float64) / self.backbone_flops


def count_flops(module: nn.Module, *inputs: Tensor) -> tuple[int, object]:
    """FLOPs of one call of ``module`` and its output."""
    counter = FlopCounterMode(display=False)
    with counter:
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
        stage_flops, extra_flops = [], []
        h = example_input[:1]
        prev = None
        for i, stage in enumerate(net.stages):
            flops, h = count_flops(stage, h)
            stage_flops.append(flops)
            if i == net.num_exits - 1:
                break
            head_flops, logits = count_flops(net.heads[i], h)
            if prev is None:
                prev = logits.new_empty(1, 0, logits.shape[-1])
            inputs = gate_features(logits, prev, global_pool(h), net.gate_config)
            gate_flops, _ = count_flops(net.gates[i], inputs)
            extra_flops.append(head_flops + gate_flops)
            prev = torch.cat([prev, logits[:, None]], dim=1)
    finally:
        net.train(was_training)
    backbone = sum(stage_flops)
    cumulative, total = [], 0
    for i, flops in enumerate(stage_flops):
        total += flops + (extra_flops[i] if i < len(extra_flops) else 0)
        cumulative.append(total)
    return ExitCosts(backbone_flops=max(backbone, 1), exit_flops=tuple(cumulative))
