"""The exit objective: expected loss of a stochastic exit policy, and its hard-target form.

Shapes: B samples, E exits (the last one has no gate), C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from leenet.config import LOSS_KINDS, GateTrainConfig, check_alpha
from leenet.errors import LeenetError


def range_scale(losses: Tensor, cost: Tensor) -> float:
    """Loss range per unit of cost range between the first exit and the plain backbone.

    Args:
        losses: (B, E) per-exit losses on the calibration split.
        cost: (E,) relative exit costs; the range is ``1 − cost[0]`` (the first exit's cost
            up to the backbone's, 1.0).

    Returns:
        ``(mean loss of exit 0 − mean loss of the last exit) / (1 − cost[0])``, or 1.0 where
        either range is empty (then range units are raw units).
    """
    d_loss = float(losses[:, 0].mean() - losses[:, -1].mean())
    d_cost = 1.0 - float(cost[0])
    return d_loss / d_cost if d_loss > 0 and d_cost > 0 else 1.0


def raw_alpha(alpha: float, scale: float) -> float:
    """The weight ``a`` of ``(1 − a)·loss + a·cost`` that ``alpha`` in range units stands for.

    In range units the loss is divided by its range and the cost by its (:func:`range_scale`
    gives their ratio), so ``a / (1 − a) = scale · alpha / (1 − alpha)``: the same minimizers,
    with alpha = 0.5 where a share of the accuracy range is worth the same share of the compute
    range. alpha = 0 and 1 map to themselves.
    """
    alpha = check_alpha(alpha)
    if alpha in (0.0, 1.0):
        return alpha
    ratio = scale * alpha / (1.0 - alpha)
    return ratio / (1.0 + ratio)


def objective_alpha(cost: Tensor, losses: Tensor, alpha: float, config: GateTrainConfig) -> float:
    """The weight of cost in ``(1 − a)·loss + a·cost`` that ``alpha`` in ``config.alpha_units`` means.

    ``"range"`` divides the loss and the cost by their ranges on the calibration split
    (``losses``, (N, E); ``cost``, (E,)): from the backbone's to the first exit's mean loss, and
    from the first exit's cost to the backbone's. Raw, the accuracy differences between exits
    are so much smaller than the cost differences that every alpha above about 0.3 sends
    everyone out at the first exit; in range units a uniform sweep spreads over the whole trade-off.
    """
    alpha = check_alpha(alpha)
    if config.alpha_units == "raw":
        return alpha
    return raw_alpha(alpha, range_scale(losses, cost.detach().float().cpu()))


def exit_losses(logits: Tensor, labels: Tensor, kind: str = "error") -> Tensor:
    """Per-sample loss of every exit.

    Args:
        logits: (B, E, C).
        labels: (B,) int64.
        kind: ``"error"`` for the 0-1 error ``1[argmax != y]``, ``"ce"`` for cross-entropy,
            ``"soft_error"`` for ``1 − softmax(logits)[y]``.

    Returns:
        (B, E) float.
    """
    if kind == "error":
        return (logits.argmax(-1) != labels[:, None]).float()
    if kind == "ce":
        flat = logits.flatten(0, 1).float()  # (B*E, C)
        targets = labels.repeat_interleave(logits.shape[1])
        return F.cross_entropy(flat, targets, reduction="none").view(logits.shape[:2])
    if kind == "soft_error":  # 1 - p(true class): bounded like the 0-1 error, but graded
        return 1.0 - logits.float().softmax(-1).gather(-1, labels[:, None, None].expand(-1, logits.shape[1], 1))[..., 0]
    raise LeenetError(f"unknown exit loss '{kind}' (valid: {', '.join(LOSS_KINDS)})")


def exit_probabilities(gate_p: Tensor) -> Tensor:
    """Probability of leaving at each exit under independent gate decisions.

    ``P_i = g_i · Π_{j<i} (1 − g_j)``; the last exit takes what is left.

    Args:
        gate_p: (B, E-1) gate probabilities.

    Returns:
        (B, E); rows sum to 1.
    """
    stay = torch.cumprod(1.0 - gate_p, dim=1)  # (B, E-1): survived gates 0..i
    ones = gate_p.new_ones(gate_p.shape[0], 1)  # not ones_like(gate_p[:, :1]): E-1 may be 0
    reach = torch.cat([ones, stay], dim=1)  # (B, E): reach exit i
    leave = torch.cat([gate_p, ones], dim=1)  # (B, E)
    return reach * leave


def expected_exit_loss(gate_p: Tensor, losses: Tensor, cost: Tensor, alpha: float) -> Tensor:
    """Mean over the batch of ``(1 − α) Σ_i P_i l_i + α Σ_i P_i cost_i``.

    Args:
        gate_p: (B, E-1) gate probabilities (the only input that carries gradients).
        losses: (B, E) per-exit losses ``l_i``.
        cost: (E,) relative cost of each exit.
        alpha: weight of compute against error, in [0, 1].

    Returns:
        Scalar tensor.
    """
    probs = exit_probabilities(gate_p)  # (B, E)
    per_exit = (1.0 - alpha) * losses + alpha * cost[None, :]  # (B, E)
    return (probs * per_exit).sum(1).mean()


def hard_exit_targets(losses: Tensor, cost: Tensor, alpha: float) -> Tensor:
    """For each gate, whether leaving there beats every later exit.

    Gate ``i``'s target is 1 iff ``s_i < min_{j>i} s_j`` with
    ``s = (1 − α) l + α cost``: a sample that has reached exit ``i`` should leave now.
    Costs strictly increase, so ties only happen at α = 0, where compute is free: then the
    sample stays (leaving early can only lose accuracy on unseen data). The first positive
    gate is the per-sample optimum ``argmin_i s_i`` (the last minimizer under ties).

    Args:
        losses: (B, E).
        cost: (E,).
        alpha: in [0, 1].

    Returns:
        (B, E-1) float targets in {0, 1}.
    """
    score = (1.0 - alpha) * losses + alpha * cost[None, :]  # (B, E)
    later_min = torch.flip(torch.cummin(torch.flip(score, [1]), dim=1).values, [1])  # min_{j>=i}
    return (score[:, :-1] < later_min[:, 1:]).float()


def balanced_bce(gate_logit: Tensor, targets: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy, averaged over gates.

    Each gate's positives and negatives get equal total weight, so a gate whose targets are
    99 % one class does not learn a constant.

    Args:
        gate_logit: (B, E-1) pre-sigmoid gate scores.
        targets: (B, E-1) in {0, 1}.

    Returns:
        Scalar tensor.
    """
    pos = targets.sum(0, keepdim=True)  # (1, E-1)
    neg = targets.shape[0] - pos
    weight = torch.where(targets > 0.5, 0.5 / pos.clamp_min(1.0), 0.5 / neg.clamp_min(1.0))
    bce = F.binary_cross_entropy_with_logits(gate_logit, targets, reduction="none")
    return (weight * bce).sum(0).mean()
