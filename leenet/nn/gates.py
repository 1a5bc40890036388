"""Exit gates: cheap confidence features of an exit's logits → P(exit here).

Routed inference (:meth:`leenet.nn.model.ExitNet.forward`) and gate fitting on cached
outputs (:mod:`leenet.policy`) build a gate's inputs with the same :func:`gate_features`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import GateConfig
from leenet.errors import LeenetError


def confidence_features(logits: Tensor) -> Tensor:
    """Cheap confidence summaries of one exit's logits.

    Args:
        logits: (B, C).

    Returns:
        (B, 3): max probability, entropy divided by log C (0 = certain, 1 = uniform),
        and the margin between the two largest probabilities.
    """
    return torch.cat(_confidence_columns(logits), dim=-1)


def _confidence_columns(logits: Tensor) -> list[Tensor]:
    """:func:`confidence_features` as three (B, 1) columns, in few operators (a routed batch of
    one pays per operator, not per FLOP): ``vecdot`` is ``(p * log_p).sum(-1)`` in one call."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    top2 = p.topk(min(2, p.shape[-1]), dim=-1).values  # (B, 2)
    entropy = torch.linalg.vecdot(p, log_p).div_(-math.log(max(p.shape[-1], 2)))  # (B,)
    top = top2[:, :1]
    return [top, entropy[:, None], top - top2[:, -1:]]


def gate_input_dim(exit_index: int, pooled_dim: int, config: GateConfig, num_classes: int = 0) -> int:
    """Width of gate ``exit_index``'s input vector (see :func:`gate_features`)."""
    dim = 3
    if config.history:
        dim += 2 * exit_index
    if config.classes:
        if num_classes < 1:
            raise LeenetError("gates that see class probabilities need the class count: pass num_classes")
        dim += 2 * num_classes
    if config.pooled:
        dim += pooled_dim
    return dim


def gate_features(
    logits: Tensor, prev_logits: Tensor, pooled: Tensor | None, config: GateConfig
) -> Tensor:
    """Input vector of a gate. Routed inference and cached training both call this.

    Args:
        logits: (B, C) this exit's logits.
        prev_logits: (B, i, C) logits of the ``i`` earlier exits (``i`` may be 0).
        pooled: (B, D) pooled features at this exit; used when ``config.pooled``.
        config: which inputs to include.

    Returns:
        (B, F) with F = :func:`gate_input_dim`: confidence features of this exit, then for
        each earlier exit its max probability and whether its prediction agrees with this
        exit's, then this exit's class probabilities and one-hot predicted class, then the
        pooled features.
    """
    parts = _confidence_columns(logits)  # concatenated once, at the end
    if config.history and prev_logits.shape[1] > 0:
        prev_max, prev_pred = prev_logits.float().softmax(-1).max(-1)  # (B, i)
        parts += [prev_max, (prev_pred == logits.argmax(-1, keepdim=True)).float()]  # (B, i) each
    if config.classes:
        p = logits.float().softmax(-1)
        # scatter rather than F.one_hot, which checks its indices on the host: two GPU syncs per gate
        parts += [p, torch.zeros_like(p).scatter_(-1, p.argmax(-1, keepdim=True), 1.0)]
    if config.pooled:
        if pooled is None:
            raise LeenetError("this gate was built to see pooled features but got none")
        parts.append(pooled.float())
    return torch.cat(parts, dim=-1)


class Gate(nn.Module):
    """Tiny MLP from gate features to P(exit here).

    Inputs are standardized with statistics stored as buffers (set once from calibration
    data by :meth:`fit_input_stats`), so a gate is scale-free and checkpoints carry
    everything it needs. A gate whose ``enabled`` flag is off never fires (probability 0),
    and the routed network skips its exit's head: gate training switches off the exits
    whose head costs more than they save at the chosen alpha.
    """

    def __init__(self, in_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("enabled", torch.ones((), dtype=torch.bool))
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.mlp = nn.Sequential(nn.Linear(in_dim, 1))

    @torch.no_grad()
    def fit_input_stats(self, inputs: Tensor) -> None:
        """Store the mean and std of ``inputs`` (N, F) for standardization."""
        self.input_mean.copy_(inputs.mean(0))
        if inputs.shape[0] > 1:
            self.input_std.copy_(inputs.std(0).clamp_min(1e-4))
        else:  # one sample has no spread (std would be NaN): keep the unit scale
            self.input_std.fill_(1.0)

    def logit(self, inputs: Tensor) -> Tensor:
        """(B, F) → (B,) pre-sigmoid score."""
        z = (inputs - self.input_mean).div_(self.input_std)
        # The layers' functions, not their modules: a routed batch of one pays for each call.
        for layer in self.mlp:
            z = F.linear(z, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else z.relu_()
        return z.squeeze(-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, F) → (B,) probability of exiting here (0 for a disabled gate)."""
        return torch.sigmoid(self.logit(inputs)).masked_fill(~self.enabled, 0.0)


def make_gates(
    num_gates: int, pooled_dims: Sequence[int], config: GateConfig, num_classes: int = 0
) -> nn.ModuleList:
    """One gate per early exit; ``pooled_dims[i]`` is the channel count at exit ``i``."""
    return nn.ModuleList(
        Gate(gate_input_dim(i, pooled_dims[i], config, num_classes), config.hidden) for i in range(num_gates)
    )


def enabled_flags(gates: Sequence[nn.Module]) -> Tensor:
    """(E-1,) bool on the gates' device: which of ``gates`` can fire (a disabled gate's head may be skipped)."""
    if not len(gates):
        return torch.zeros(0, dtype=torch.bool)
    return torch.stack([gate.enabled for gate in gates])
