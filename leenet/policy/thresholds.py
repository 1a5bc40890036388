"""One threshold search: per-gate score thresholds chosen on calibration by coordinate descent.

Gate ``i`` fires for a sample when it is enabled and its score (N, E-1) reaches ``values[i]``;
a sample leaves at the first gate that fires. The same search serves an alpha (least
``(1 − α)·loss + α·cost``) and a budget (least loss at a mean cost at most the budget): it
starts from the best threshold shared by every gate, then improves one gate at a time over
its score quantiles, always firing, and never firing (disabled), every candidate of a gate
evaluated at once. A disabled gate saves its exit's head wherever no later gate reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from leenet.nn.cost import CostModel
from leenet.policy.simulate import first_exit

ALWAYS = -math.inf  # a threshold every score reaches: the gate fires for every sample
# Budget solutions whose mean calibration loss is this close count as equally good (0.05 % of
# accuracy, 5 images in 10k: within noise); the dearest is kept (see budget_thresholds).
BUDGET_TIE = 5e-4
SHARED_LEVELS = torch.linspace(-8.0, 8.0, 257)  # starting thresholds shared by every gate (logit scale)

# (mean loss (K,), mean cost (K,)) of K candidates → (index of the best, whether it is feasible)
Choose = Callable[[Tensor, Tensor], tuple[int, bool]]


@dataclass(frozen=True)
class Thresholds:
    """Where each gate fires: ``enabled[i] and score_i >= values[i]``."""

    values: Tensor  # (E-1,) float; ALWAYS fires for every sample
    enabled: Tensor  # (E-1,) bool; a disabled gate never fires


def routed_means(scores: Tensor, losses: Tensor, costs: CostModel, values: Tensor,
                 enabled: Tensor) -> tuple[Tensor, Tensor]:
    """Mean loss and mean cost, each (K,), of routing by each of K threshold settings.

    Args:
        scores: (N, E-1) gate scores; losses: (N, E) per-exit losses.
        values, enabled: (K, E-1) thresholds and which gates can fire.
    """
    exits = first_exit((scores[None] >= values[:, None, :]) & enabled[:, None, :])  # (K, N)
    cost = costs.routed(enabled)  # (K, E): disabled gates and unneeded heads skipped
    return losses.gather(1, exits.T).mean(0), cost.gather(1, exits).mean(1)


@torch.no_grad()
def search_thresholds(scores: Tensor, losses: Tensor, costs: CostModel, choose: Choose, *,
                      grid: int = 64, rounds: int = 3) -> Thresholds | None:
    """Thresholds minimizing ``choose``'s criterion on calibration, or None if none is feasible.

    Args:
        scores: (N, E-1) gate scores; losses: (N, E) per-exit losses.
        costs: the network's exit costs.
        choose: picks the best of K candidates from their mean losses and costs; ties go
            to the later candidate where it says so (candidates are ordered from firing most
            to firing least).
        grid: score quantiles tried per gate and round.
        rounds: passes of coordinate descent over the gates.
    """
    gates = scores.shape[1]
    levels = torch.cat([torch.tensor([ALWAYS]), SHARED_LEVELS])
    values = torch.cat([levels, levels[-1:]])[:, None].expand(-1, gates).clone()  # (L+1, E-1)
    enabled = torch.ones_like(values, dtype=torch.bool)
    enabled[-1] = False  # the last start: every gate off, the backbone alone
    best, feasible = choose(*routed_means(scores, losses, costs, values, enabled))
    if not feasible:
        return None
    current = Thresholds(values[best].clone(), enabled[best].clone())
    for _ in range(rounds):
        for i in range(gates):
            options = torch.quantile(scores[:, i], torch.linspace(0.0, 1.0, grid))
            # row 0 keeps the current setting (a step never makes things worse), then
            # always fire, each quantile, and never fire
            trial_values = current.values[None].repeat(grid + 3, 1)
            trial_on = current.enabled[None].repeat(grid + 3, 1)
            trial_values[1:, i] = torch.cat([torch.tensor([ALWAYS]), options, options[-1:]])
            trial_on[1:, i] = True
            trial_on[-1, i] = False
            best, _ = choose(*routed_means(scores, losses, costs, trial_values, trial_on))
            current = Thresholds(trial_values[best].clone(), trial_on[best].clone())
    return current


def alpha_thresholds(scores: Tensor, losses: Tensor, costs: CostModel, alpha: float, *,
                     grid: int = 64, rounds: int = 3) -> Thresholds:
    """Thresholds of least calibration objective ``(1 − α)·loss + α·cost`` (raw ``alpha``).

    ``rounds = 0`` keeps the best threshold shared by every gate (or every gate off).

    Ties go to the later candidate (the one that exits least), so alpha = 0 exits no sample
    early without a gain on calibration; at alpha = 0 every gate is off outright: compute is
    free, and the backbone's own exit is what alpha = 0 promises.
    """
    if alpha == 0.0:
        return Thresholds(torch.zeros(scores.shape[1]), torch.zeros(scores.shape[1], dtype=torch.bool))

    def choose(loss: Tensor, cost: Tensor) -> tuple[int, bool]:
        values = (1.0 - alpha) * loss + alpha * cost
        return len(values) - 1 - int(values.flip(0).argmin()), True  # the last minimum

    found = search_thresholds(scores, losses, costs, choose, grid=grid, rounds=rounds)
    assert found is not None  # every candidate is feasible
    return found


def budget_thresholds(scores: Tensor, losses: Tensor, costs: CostModel, max_cost: float, *,
                      tie: float = BUDGET_TIE, grid: int = 64, rounds: int = 3) -> Thresholds | None:
    """Thresholds of least mean calibration loss with mean cost ≤ ``max_cost``, or None.

    Candidates within ``tie`` of the least loss count as equally good and the dearest of them
    wins: the budget is the user's to spend, and on new data later exits are the safer bet
    (thresholds chosen on calibration flatter the early ones).
    """
    def choose(loss: Tensor, cost: Tensor) -> tuple[int, bool]:
        over = cost > max_cost * (1 + 1e-6)  # float32 means: a budget of exactly the first exit's cost fits
        loss = torch.where(over, torch.inf, loss)
        tied = loss <= loss.min() + tie + 1e-12
        best = int(torch.argmax(torch.where(tied, cost, -torch.inf)))
        return best, not bool(over[best])

    return search_thresholds(scores, losses, costs, choose, grid=grid, rounds=rounds)
