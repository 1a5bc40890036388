"""Exit policies simulated on cached per-exit outputs: learned gates, thresholds, oracle.

Running the backbone once per split and caching every exit's logits turns every policy
evaluation into a few vectorized tensor operations, so sweeps over dozens of alphas or
thresholds cost milliseconds. ``N`` samples, ``E`` exits, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import SCORE_KINDS
from leenet.errors import LeenetError

ABOVE_EVERY_SCORE = 1.01  # a confidence threshold no score in [0, 1] reaches: the baseline's "never exit"


@dataclass(frozen=True)
class PolicyResult:
    """Outcome of one exit policy on one split."""

    accuracy: float
    cost: float  # mean cost, relative to the backbone's FLOPs
    exit_fractions: tuple[float, ...]  # fraction of samples leaving at each exit
    # Standard error of (accuracy - the final exit's accuracy) on the same samples (McNemar:
    # sqrt(share of samples where exactly one of the two is right / N)); 0 when unknown.
    drop_stderr: float = 0.0
    cost_stderr: float = 0.0  # standard error of the mean cost (per-sample cost spread / sqrt(N))
    # (N,) bool: whether each sample was classified right, for paired comparisons of two
    # policies on the same samples (leenet.compare.envelope_gap); not serialized
    outcomes: Tensor | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "cost": self.cost,
            "exit_fractions": list(self.exit_fractions),
        }


def first_exit(leave: Tensor) -> Tensor:
    """Index of the first exit a sample leaves at.

    Args:
        leave: (..., N, E-1) bool, whether each early exit would let the sample go.

    Returns:
        (..., N) int64; E-1 (the final exit) where no early exit fires.
    """
    padded = F.pad(leave, (0, 1), value=True)  # the final exit always fires
    return padded.int().argmax(dim=-1)  # first True


def summarize(exit_index: Tensor, correct: Tensor, cost: Tensor) -> PolicyResult:
    """Accuracy, mean cost and exit fractions of per-sample exit choices.

    Args:
        exit_index: (N,) int64.
        correct: (N, E) bool.
        cost: (E,) relative cost of each exit.
    """
    chosen = correct.gather(1, exit_index[:, None]).squeeze(1)  # (N,)
    n = len(exit_index)
    sample_cost = cost.to(exit_index.device)[exit_index].float()  # (N,)
    fractions = torch.bincount(exit_index, minlength=correct.shape[1]).float() / n
    discordant = (chosen != correct[:, -1]).float().mean()
    stderr = math.sqrt(float(discordant) / n)
    cost_stderr = float(sample_cost.std(correction=0)) / math.sqrt(n)
    return PolicyResult(float(chosen.float().mean()), float(sample_cost.mean()), tuple(float(f) for f in fractions),
                        stderr, cost_stderr, chosen.cpu())


@torch.no_grad()
def gate_probabilities(gates: Sequence[nn.Module], inputs: Sequence[Tensor]) -> Tensor:
    """(N, E-1) probabilities of a set of gates on cached gate inputs."""
    if not gates:
        return torch.zeros(inputs[0].shape[0] if inputs else 0, 0)
    return torch.stack([gate(x) for gate, x in zip(gates, inputs)], dim=1)


def confidence_scores(logits: Tensor, kind: str) -> Tensor:
    """(N, E, C) → (N, E) confidence, higher = surer.

    ``max_softmax`` is the largest softmax probability (SDN, ``earlyon``); ``entropy`` is
    one minus the entropy divided by log C (BranchyNet exits when entropy is low).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    if kind == "max_softmax":
        return log_p.max(-1).values.exp()
    if kind == "entropy":
        entropy = -(log_p.exp() * log_p).sum(-1)
        return 1.0 - entropy / math.log(max(logits.shape[-1], 2))
    raise LeenetError(f"unknown confidence score '{kind}' (valid: {', '.join(SCORE_KINDS)})")


def threshold_exits(scores: Tensor, threshold: float) -> Tensor:
    """Leave at the first early exit whose confidence is at least ``threshold``.

    Args:
        scores: (N, E) confidence of each exit (the last column is ignored).
    """
    return first_exit(scores[:, :-1] >= threshold)


def threshold_grid(scores: Tensor, count: int = 41) -> list[float]:
    """Thresholds spread over the quantiles of the early exits' scores, plus never-exit.

    Scores lie in [0, 1], so the last threshold, :data:`ABOVE_EVERY_SCORE`, sends every sample to
    the final exit.
    """
    early = scores[:, :-1].flatten().float()
    if early.numel() == 0:
        return [ABOVE_EVERY_SCORE]
    quantiles = torch.quantile(early[:200_000], torch.linspace(0.0, 1.0, count - 1))
    values = sorted({round(float(q), 6) for q in quantiles})
    return values + [ABOVE_EVERY_SCORE]


def oracle_exits(correct: Tensor) -> Tensor:
    """Cheapest exit that is right; samples no exit gets right leave at the first exit."""
    return correct.int().argmax(dim=1)  # first True, or 0 if none
