"""Every candidate policy measured on both cached splits with the same exit costs.

Choices (which alpha, which threshold, which budget; :mod:`leenet.evaluate.select`) only
ever look at the calibration numbers; the test numbers are what gets reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from leenet.config import GateConfig, GateTrainConfig
from leenet.nn.cost import CostModel
from leenet.nn.gates import enabled_flags
from leenet.policy.cache import CachedOutputs
from leenet.policy.fit import GateProblem
from leenet.policy.simulate import (
    PolicyResult,
    confidence_scores,
    first_exit,
    gate_probabilities,
    oracle_exits,
    summarize,
    threshold_exits,
    threshold_grid,
)
from leenet.policy.sweep import GateFit, budget_sweep

DECISION_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 19))  # 0.10 … 0.90


@dataclass(frozen=True)
class Candidate:
    """One policy setting, measured on the calibration and the test split."""

    method: str  # "leenet", "max_softmax", "entropy", "single_exit" or "oracle"
    param: float | int | None  # alpha, confidence threshold, exit index, or None
    calib: PolicyResult
    test: PolicyResult
    threshold: float | None = None  # LEENet's gate decision threshold

    def as_dict(self) -> dict:
        entry = {"method": self.method, "param": self.param, **self.test.as_dict()}
        if self.threshold is not None:
            entry["threshold"] = self.threshold
        entry["calib"] = self.calib.as_dict()
        return entry


class Evaluator:
    """Measures policies on a calibration and a test cache with the same exit costs.

    Args:
        calib: cached outputs of the calibration split.
        test: cached outputs of the test split.
        cost: (E,) relative cost of each exit with every head run (``ExitNet.cost``).
        head_cost: (E-1,) relative cost of each early head (``ExitNet.head_cost``).
        gate_cost: (E-1,) relative cost of each early gate (``ExitNet.gate_cost``). With both, a
            policy does not pay for what it never needs: a disabled LEENet gate and its head
            (unless a later gate reads it), every head when thresholds never fire, the heads
            before a single exit. None: every policy pays for every head and gate on its way.
        linked: whether exits read the heads before them (a cascade or an ensemble; see
            :class:`~leenet.nn.cost.CostModel`).
        final_heads: whether the final exit reads every head (an ensembled final exit).
    """

    def __init__(self, calib: CachedOutputs, test: CachedOutputs, cost: Tensor,
                 head_cost: Tensor | None = None, gate_cost: Tensor | None = None, *,
                 linked: bool = False, final_heads: bool = False) -> None:
        self.calib, self.test = calib, test
        cost = cost.detach().float().cpu()
        zeros = torch.zeros(len(cost) - 1)
        parts = (zeros if c is None else c.detach().float().cpu() for c in (head_cost, gate_cost))
        self.costs = CostModel(cost, *parts, linked=linked, final_heads=final_heads)
        self._correct = (calib.correct, test.correct)

    @classmethod
    def of(cls, net: nn.Module, calib: CachedOutputs, test: CachedOutputs) -> Evaluator:
        """An evaluator with an :class:`~leenet.model.ExitNet`'s costs."""
        return cls(calib, test, net.cost, net.head_cost, net.gate_cost, linked=net.linked,
                   final_heads=net.final_reads_heads)

    @property
    def cost(self) -> Tensor:
        """(E,) relative cost of each exit with every head run."""
        return self.costs.cost

    def _measure(self, calib_exits: Tensor, test_exits: Tensor,
                 cost: Tensor | None = None) -> tuple[PolicyResult, PolicyResult]:
        cost = self.cost if cost is None else cost
        return (
            summarize(calib_exits, self._correct[0], cost),
            summarize(test_exits, self._correct[1], cost),
        )

    def leenet(
        self, alpha: float, gates: nn.ModuleList, config: GateConfig,
        thresholds: Sequence[float] = (0.5,), calib_probs: Tensor | None = None,
    ) -> list[Candidate]:
        """The learned gates for one alpha, at each decision threshold.

        ``calib_probs`` (N, E-1) are the gates' out-of-fold probabilities on the calibration
        split (:class:`leenet.policy.sweep.GateFit`). A candidate's calibration cost and exit
        fractions are always the gates' own: whether a gate fires does not depend on labels,
        so its cost transfers to new data. Its calibration accuracy is the lower of the gates'
        own and the out-of-fold routing's: gates judged on the samples they were fit to look
        surer than they are (the own figure flatters), while the out-of-fold gates, fit on
        less data, can route differently where an exit switches on or off between alphas
        (the out-of-fold figure then describes another policy). Neither lower figure flatters.
        """
        p_calib = gate_probabilities(gates, self.calib.gate_inputs(config))
        p_test = gate_probabilities(gates, self.test.gate_inputs(config))
        cost = replace(self.costs, history=config.history).routed(enabled_flags(gates).cpu())
        out = []
        for t in thresholds:
            calib, test = self._measure(first_exit(p_calib >= t), first_exit(p_test >= t), cost)
            if calib_probs is not None:
                held_out = summarize(first_exit(calib_probs >= t), self._correct[0], cost)
                if held_out.accuracy < calib.accuracy:
                    calib = replace(calib, accuracy=held_out.accuracy, drop_stderr=held_out.drop_stderr)
            out.append(Candidate("leenet", alpha, calib, test, threshold=t))
        return out

    def budget_curve(self, problem: GateProblem, fit: GateFit, config: GateTrainConfig, step: float, *,
                     progress: bool = False) -> list[Candidate]:
        """LEENet's budget mode solved every ``step`` of cost from the first exit's to the
        backbone's (method ``leenet_budget``, param = the budget): the curve between an alpha
        sweep's corners. ``fit``: any alpha's "predict" fit of the sweep, whose predictors and
        held-out scores every budget shares (:func:`leenet.policy.sweep.budget_sweep`).
        """
        # from the first exit's cost, rounded up (rounded down it would be a budget nothing meets), to
        # what no gate at all costs: the backbone's, or more where the final exit reads the heads
        first = math.ceil(float(problem.costs.cost[0]) * 1e6) / 1e6
        none = torch.zeros(problem.num_exits - 1, dtype=torch.bool)
        top = max(1.0, float(problem.costs.routed(none)[-1]))
        budgets = [round(first + k * step, 6) for k in range(int((top - first) / step + 1e-6) + 1)]
        solved = budget_sweep(problem, fit, self.calib, budgets, config, progress=progress)
        return [replace(c, method="leenet_budget")
                for budget, gates in solved.items()
                # decision threshold 0.5 (the default): where the shifted predictors' logits cross 0
                for c in self.leenet(budget, gates.gates, problem.gate_config, calib_probs=gates.calib_probs)]

    def confidence(self, kind: str) -> list[Candidate]:
        """A confidence-threshold baseline over a grid of thresholds set from calibration scores."""
        s_calib = confidence_scores(self.calib.logits, kind)
        s_test = confidence_scores(self.test.logits, kind)
        early = len(self.cost) - 1
        return [  # scores lie in [0, 1]: above 1 no exit fires, and no head needs to run
            Candidate(kind, t, *self._measure(threshold_exits(s_calib, t), threshold_exits(s_test, t),
                                              self.costs.routed(torch.full((early,), t <= 1.0))))
            for t in threshold_grid(s_calib)
        ]

    def single_exits(self) -> list[Candidate]:
        """Every sample leaves at exit ``i``, for each ``i``."""
        n_calib, n_test = len(self.calib.labels), len(self.test.labels)
        cost = self.costs.single_exits()  # the network cut at exit i runs one head
        return [
            Candidate("single_exit", i, *self._measure(
                torch.full((n_calib,), i, dtype=torch.long), torch.full((n_test,), i, dtype=torch.long), cost))
            for i in range(len(self.cost))
        ]

    def oracle(self) -> Candidate:
        """Each sample leaves at the cheapest exit that gets it right (a bound, not a policy)."""
        return Candidate("oracle", None, *self._measure(
            oracle_exits(self._correct[0]), oracle_exits(self._correct[1])))
