"""Gates set by hand, to try routing without data or training.

:func:`set_gates` makes each gate fire when its exit's top softmax probability reaches a
threshold (BranchyNet's rule, written into the gates' weights); :func:`set_gates_by_share`
picks those thresholds on a sample batch so that given shares of it leave at each exit.
The network then routes with its ordinary ``forward``, and saves and exports as trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from leenet.errors import LeenetError
from leenet.nn.model import ExitNet

_SCALE = 10.0  # gate logit per unit of confidence above the threshold


@torch.no_grad()
def set_gates(net: ExitNet, threshold: float | Sequence[float]) -> ExitNet:
    """Make every gate fire when its exit's max softmax probability is at least ``threshold``.

    Args:
        net: the network; its gates are overwritten (input statistics reset, weights set),
            whatever inputs they see (history, pooled features and class probabilities get
            weight 0). ``net.threshold`` is left as it is: the gates are offset to match it.
        threshold: one value in (0, 1] for every early exit, or one per early exit;
            ``math.inf`` switches an exit off (its gate never fires).

    Returns:
        ``net``, in eval mode.
    """
    levels = _per_exit(net, threshold, "threshold")
    bad = [t for t in levels if not (0.0 < t <= 1.0 or t == math.inf)]
    if bad:
        raise LeenetError(f"a confidence threshold is in (0, 1] (or math.inf for an exit that never "
                          f"fires), got {bad[0]}")
    offset = math.log(net.threshold / (1 - net.threshold)) if net.threshold < 1 else math.inf
    if offset == math.inf and any(t != math.inf for t in levels):
        raise LeenetError("net.threshold is 1.0, so no gate can fire: set net.threshold to 0.5 first")
    for gate, level in zip(net.gates, levels):
        gate.input_mean.zero_()
        gate.input_std.fill_(1.0)
        gate.enabled.fill_(level != math.inf)
        if level != math.inf:
            _confidence_rule_(gate.mlp, level, offset)
    return net.eval()


def _confidence_rule_(mlp: nn.Sequential, level: float, offset: float) -> None:
    """Weights so that ``mlp(features) = _SCALE * (features[0] - level) + offset``; feature 0 is
    the max probability (:func:`leenet.nn.gates.confidence_features`)."""
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    for layer in linears:
        layer.weight.zero_()
        layer.bias.zero_()
    if len(linears) == 1:
        linears[0].weight[0, 0] = _SCALE
        linears[0].bias[0] = offset - _SCALE * level
        return
    first, last = linears
    if first.out_features < 2:
        raise LeenetError("set_gates needs gates with at least 2 hidden units (or none): build with GateConfig(hidden=16)")
    # relu(z) - relu(-z) = z: the hidden layer passes the signed margin through
    first.weight[0, 0], first.bias[0] = _SCALE, -_SCALE * level
    first.weight[1, 0], first.bias[1] = -_SCALE, _SCALE * level
    last.weight[0, 0], last.weight[0, 1] = 1.0, -1.0
    last.bias[0] = offset


@torch.no_grad()
def set_gates_by_share(net: ExitNet, x: Tensor, shares: Sequence[float]) -> list[float]:
    """Set confidence-threshold gates so that about ``shares[i]`` of ``x`` leaves at early exit ``i``.

    Args:
        net: the network (its gates are overwritten as by :func:`set_gates`).
        x: (N, C, H, W) a sample batch of images like the ones to route.
        shares: (E-1,) fraction of all of ``x`` leaving at each early exit, each >= 0, summing
            to at most 1; the rest leaves at the final exit. Ties in confidence may move a few samples.

    Returns:
        The threshold set at each early exit (``math.inf`` where no sample should leave).
    """
    shares = _per_exit(net, shares, "shares")
    if any(s < 0 for s in shares) or sum(shares) > 1 + 1e-9:
        raise LeenetError(f"shares are fractions >= 0 of the batch summing to at most 1, got {list(shares)}")
    net.eval()
    confidence = net.forward_all(x).logits[:, :-1].float().softmax(-1).amax(-1)  # (N, E-1)
    reaching = torch.ones(len(x), dtype=torch.bool)
    levels = []
    for i, share in enumerate(shares):
        scores = confidence[reaching, i].sort(descending=True).values.cpu()
        k = min(round(share * len(x)), len(scores))
        if k == 0:
            levels.append(math.inf)
            continue
        low = float(scores[k]) if k < len(scores) else 0.0
        levels.append(min(1.0, (float(scores[k - 1]) + low) / 2) if k < len(scores) else max(float(scores[-1]), 1e-6))
        reaching &= confidence[:, i].cpu() < levels[-1]
    set_gates(net, levels)
    return levels


def _per_exit(net: ExitNet, value: float | Sequence[float], what: str) -> list[float]:
    early = net.num_exits - 1
    values = [float(value)] * early if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != early:
        raise LeenetError(f"{what} needs one value per early exit ({early}), got {len(values)}")
    return values
