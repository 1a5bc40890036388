"""Exit heads (features → logits) and exit gates (confidence features → P(exit here)).

Every module here creates all of its parameters in ``__init__`` from the shape of the
features it will see, so a multi-exit network is complete (and its FLOPs countable) as
soon as it is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.errors import LeenetError

HEAD_KINDS = ("pool", "sdn", "flatten")


def global_pool(features: Tensor) -> Tensor:
    """Average a feature map over its spatial axes: (B, C, H, W) → (B, C); (B, D) passes."""
    return features.flatten(2).mean(-1) if features.dim() > 2 else features.flatten(1)


class PooledLinearHead(nn.Module):
    """Global average pool → linear. Cheap, and the default."""

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_shape[0], num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(global_pool(features))


class ConvHead(nn.Module):
    """SDN-style head: 3×3 conv/BN/ReLU reduction (stride 2 on large maps), avg+max pool, linear.

    Stronger than :class:`PooledLinearHead` on early, low-level features at the price of one
    convolution; its FLOPs are counted in the exit cost like everything else.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise LeenetError(
                f"head 'sdn' needs 4-D feature maps (B, C, H, W) but this exit gives shape "
                f"{tuple(in_shape)}: use --head pool or flatten"
            )
        channels, height, _ = in_shape
        width = max(32, min(channels, 256))
        stride = 2 if height > 8 else 1
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        h = self.reduce(features)  # (B, W, H', W')
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # (B, 2W)
        return self.fc(pooled)


class FlattenLinearHead(nn.Module):
    """Flatten → linear, the original LEENet head (kept for reproduction; large on big maps)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(in_shape), num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.flatten(1))


_HEADS = {"pool": PooledLinearHead, "sdn": ConvHead, "flatten": FlattenLinearHead}


def make_head(kind: str, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build an exit head.

    Args:
        kind: ``"pool"`` (global pool → linear), ``"sdn"`` (conv reduction → pool → linear)
            or ``"flatten"`` (flatten → linear, the original LEENet head).
        in_shape: shape of one sample's features at this exit, ``(C, H, W)`` or ``(D,)``.
        num_classes: number of output logits.
    """
    if kind not in _HEADS:
        raise LeenetError(f"unknown head '{kind}' (valid: {', '.join(HEAD_KINDS)})")
    return _HEADS[kind](in_shape, num_classes)


@dataclass(frozen=True)
class GateConfig:
    """What a gate sees and how big it is."""

    hidden: int = 16  # width of the gate MLP's hidden layer; 0 = logistic regression
    history: bool = True  # also see earlier exits' max-probabilities and agreement with them
    pooled: bool = False  # also see the globally pooled feature map at this exit
    classes: bool = False  # also see this exit's class probabilities and predicted class (one-hot):
    # how far a confidence can be trusted depends on the class (a sure "shirt" is wrong more often)

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise LeenetError(f"gate hidden width must be >= 0, got {self.hidden}")


def confidence_features(logits: Tensor) -> Tensor:
    """Cheap confidence summaries of one exit's logits.

    Args:
        logits: (B, C).

    Returns:
        (B, 3): max probability, entropy divided by log C (0 = certain, 1 = uniform),
        and the margin between the two largest probabilities.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    top2 = p.topk(min(2, p.shape[-1]), dim=-1).values  # (B, 2)
    entropy = -(p * log_p).sum(-1) / math.log(max(p.shape[-1], 2))
    margin = top2[:, 0] - top2[:, -1]
    return torch.stack([top2[:, 0], entropy, margin], dim=-1)


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
    parts = [confidence_features(logits)]
    if config.history and prev_logits.shape[1] > 0:
        prev_p = prev_logits.float().softmax(-1)  # (B, i, C)
        prev_max, prev_pred = prev_p.max(-1)  # (B, i)
        agree = (prev_pred == logits.argmax(-1, keepdim=True)).float()  # (B, i)
        parts += [prev_max, agree]
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
        return self.mlp((inputs - self.input_mean) / self.input_std).squeeze(-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, F) → (B,) probability of exiting here (0 for a disabled gate)."""
        return torch.sigmoid(self.logit(inputs)).masked_fill(~self.enabled, 0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before gates could be switched off have no flag: they were on.
        state_dict.setdefault(prefix + "enabled", torch.ones((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
