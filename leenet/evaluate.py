"""Policy sweeps, operating points and budgets, chosen on calibration and reported on test.

Every candidate policy is evaluated on both cached splits. Choices (which alpha, which
threshold) only ever look at the calibration numbers; the test numbers are what gets
reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from leenet.cost import CostModel
from leenet.errors import LeenetError
from leenet.heads import GateConfig, enabled_flags
from leenet.policies import (
    CachedOutputs,
    PolicyResult,
    confidence_scores,
    first_exit,
    gate_probabilities,
    oracle_exits,
    summarize,
    threshold_exits,
    threshold_grid,
)
from leenet.train import GateFit, GateTrainConfig, budget_sweep

COST_BUDGETS = (0.25, 0.5, 0.75, 1.0)
ACCURACY_DROPS = (0.005, 0.01)
# Standard errors (of the calibration figure) of slack a budget keeps on calibration. A test
# figure scatters around the calibration one by about sqrt(2) of them (two samples of the same
# size), so 1.5 is about one standard error of that difference: a setting right at the budget
# still holds on test about 85 % of the time. Measured (benchmarks/budget_hold.py): 65 of 66
# Fashion-MNIST budgets held behind SDN heads, against 58 of 66 at 1.0.
BUDGET_MARGIN = 1.5
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
        calib, test: cached outputs of the two splits.
        cost: (E,) relative cost of each exit with every head run (``ExitNet.cost``).
        head_cost, gate_cost: (E-1,) relative cost of each early head and gate
            (``ExitNet.head_cost``, ``ExitNet.gate_cost``). A policy does not pay for what it
            never needs: a disabled LEENet gate and its head (unless a later gate reads it),
            every head when thresholds never fire, the heads before a single exit. None: every
            policy pays for every head and gate on its way.
    """

    def __init__(self, calib: CachedOutputs, test: CachedOutputs, cost: Tensor,
                 head_cost: Tensor | None = None, gate_cost: Tensor | None = None) -> None:
        self.calib, self.test = calib, test
        cost = cost.detach().float().cpu()
        zeros = torch.zeros(len(cost) - 1)
        parts = (zeros if c is None else c.detach().float().cpu() for c in (head_cost, gate_cost))
        self.costs = CostModel(cost, *parts)
        self._correct = (calib.correct, test.correct)

    @classmethod
    def of(cls, net: nn.Module, calib: CachedOutputs, test: CachedOutputs) -> Evaluator:
        """An evaluator with an :class:`~leenet.model.ExitNet`'s costs."""
        return cls(calib, test, net.cost, net.head_cost, net.gate_cost)

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
        split (:class:`leenet.train.GateFit`). A candidate's calibration cost and exit
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

    def budget_curve(self, net: nn.Module, fit: GateFit, config: GateTrainConfig, step: float, *,
                     progress: bool = False) -> list[Candidate]:
        """LEENet's budget mode solved every ``step`` of cost from the first exit's to the
        backbone's (method ``leenet_budget``, param = the budget): the curve between an alpha
        sweep's corners. ``fit``: any alpha's "predict" fit of the sweep, whose predictors and
        held-out scores every budget shares (:func:`leenet.train.budget_sweep`).
        """
        first = float(net.cost[0])
        budgets = [round(first + k * step, 6) for k in range(int((1.0 - first) / step + 1e-6) + 1)]
        return [replace(c, method="leenet_budget")
                for budget, solved in budget_sweep(net, fit, self.calib, budgets, config, progress=progress).items()
                # decision threshold 0.5 (the default): where the shifted predictors' logits cross 0
                for c in self.leenet(budget, solved.gates, net.gate_config, calib_probs=solved.calib_probs)]

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


def best_within_cost(
    candidates: Iterable[Candidate], max_cost: float, *, margin: float = BUDGET_MARGIN
) -> Candidate | None:
    """Most accurate candidate on calibration whose calibration cost is at most ``max_cost``.

    The cost must fit with ``margin`` standard errors of the mean cost to spare, so that a
    candidate right at the budget does not overshoot it on new data by sampling noise.
    """
    fits = [c for c in candidates if c.calib.cost + margin * c.calib.cost_stderr <= max_cost + 1e-9]
    return max(fits, key=lambda c: (c.calib.accuracy, -c.calib.cost), default=None)


def cheapest_within_drop(
    candidates: Iterable[Candidate], reference: float, max_drop: float, *, margin: float = BUDGET_MARGIN
) -> Candidate | None:
    """Cheapest candidate on calibration losing at most ``max_drop`` accuracy vs ``reference``.

    A candidate's calibration drop must fit the budget with ``margin`` standard errors to
    spare (``PolicyResult.drop_stderr``): the cheapest of many candidates that barely fit is
    the one whose calibration luck is largest, and it misses the budget on new data.
    """
    fits = [c for c in candidates
            if c.calib.accuracy - margin * c.calib.drop_stderr >= reference - max_drop - 1e-9]
    return min(fits, key=lambda c: (c.calib.cost, -c.calib.accuracy), default=None)


def operating_points(
    families: dict[str, list[Candidate]], calib_reference: float, test_reference: float, *,
    margin: float = BUDGET_MARGIN,
) -> list[dict]:
    """Accuracy at fixed FLOPs budgets and cost at fixed accuracy drops, for each method.

    Args:
        families: method name → its candidates (LEENet with its decision thresholds).
        calib_reference, test_reference: the full backbone's accuracy on each split.
        margin: standard errors of slack each budget keeps on calibration.
    """
    points = []
    for method, candidates in families.items():
        for budget in COST_BUDGETS:
            chosen = best_within_cost(candidates, budget, margin=margin)
            points.append(_point(f"accuracy at <= {budget:.0%} FLOPs", "max_cost", budget, method,
                                 chosen, chosen is not None and held_on_test(chosen, max_cost=budget)))
        for drop in ACCURACY_DROPS:
            chosen = cheapest_within_drop(candidates, calib_reference, drop, margin=margin)
            held = chosen is not None and held_on_test(chosen, max_drop=drop, test_reference=test_reference)
            points.append(_point(f"cost at <= {drop * 100:g} pt drop", "max_drop", drop, method, chosen, held))
    return points


def held_on_test(chosen: Candidate, *, max_cost: float | None = None, max_drop: float | None = None,
                 test_reference: float | None = None) -> bool:
    """Whether a setting chosen on calibration meets its budget on the test split: a mean cost of
    at most ``max_cost``, or at most ``max_drop`` accuracy below ``test_reference`` (the backbone's)."""
    if max_cost is not None:
        return chosen.test.cost <= max_cost + 1e-9
    return chosen.test.accuracy >= test_reference - max_drop - 1e-9


def _point(name: str, kind: str, target: float, method: str, chosen: Candidate | None, held: bool) -> dict:
    point = {"name": name, "kind": kind, "target": target, "method": method, "reachable": chosen is not None}
    if chosen is not None:
        point.update(chosen.as_dict())
        point["met_on_test"] = held
    return point


def check_margin(margin: float) -> float:
    """A budget margin (standard errors of slack) must be a finite number >= 0."""
    if not (margin >= 0 and math.isfinite(margin)):
        raise LeenetError(f"--budget-margin must be a number of standard errors >= 0 (default {BUDGET_MARGIN:g}), "
                          f"got {margin}")
    return margin


def _unreachable(candidates: list[Candidate], kind: str, target: float, calib_reference: float,
                 margin: float) -> str:
    """Why no candidate meets a budget on calibration, leading with the figure that binds, and what to change."""
    relax = ", lower --budget-margin" if margin > 0 else ""
    if kind == "target_cost":
        cheapest = min(candidates, key=lambda c: c.calib.cost + margin * c.calib.cost_stderr).calib
        slack = f" ({cheapest.cost + margin * cheapest.cost_stderr:.3f} with {margin:g} standard errors of slack)"
        return (f"UNREACHABLE on the calibration split: the cheapest LEENet setting costs {cheapest.cost:.3f} of the "
                f"backbone's FLOPs there{slack if margin > 0 else ''}, more than {target:g}; raise --target-cost"
                f"{relax} or add an earlier exit")
    best = max(candidates, key=lambda c: c.calib.accuracy - margin * c.calib.drop_stderr).calib
    slack = f" ({best.accuracy - margin * best.drop_stderr:.2%} with {margin:g} standard errors of slack)"
    return (f"UNREACHABLE on the calibration split: the most accurate LEENet setting reaches {best.accuracy:.2%} "
            f"there{slack if margin > 0 else ''}, against the backbone's {calib_reference:.2%} on the same split: "
            f"more than {100 * target:g} pt below it; raise --max-drop{relax} or use stronger exit heads")


def find_budget(
    candidates: list[Candidate], *, target_cost: float | None = None, max_drop: float | None = None,
    calib_reference: float, test_reference: float, margin: float = BUDGET_MARGIN,
) -> dict:
    """Choose the LEENet setting (alpha, decision threshold) that meets a budget on calibration.

    Exactly one of ``target_cost`` (mean cost ≤ this fraction of backbone FLOPs) or
    ``max_drop`` (accuracy ≥ backbone accuracy − this, as a fraction) must be given; the
    budget must fit with ``margin`` standard errors to spare. Returns a dict saying what was
    chosen, its calibration and test figures, whether the budget held on test, and a plain
    message; an unreachable budget says so.
    """
    if (target_cost is None) == (max_drop is None):
        raise LeenetError("give exactly one budget: --target-cost C or --max-drop D")
    if not candidates:
        raise LeenetError("no LEENet settings to choose a budget from: sweep at least one alpha")
    check_margin(margin)
    if target_cost is not None:
        if not target_cost > 0:
            raise LeenetError(f"--target-cost must be a positive fraction of the backbone's FLOPs, got {target_cost}")
        chosen, kind, target = best_within_cost(candidates, target_cost, margin=margin), "target_cost", target_cost
    else:
        if not 0 <= max_drop < 1:
            raise LeenetError(f"--max-drop must be an accuracy fraction in [0, 1), e.g. 0.005, got {max_drop}")
        chosen = cheapest_within_drop(candidates, calib_reference, max_drop, margin=margin)
        kind, target = "max_drop", max_drop
    budget = {"kind": kind, "target": target, "margin": margin, "reachable": chosen is not None}
    if chosen is None:
        budget["message"] = _unreachable(candidates, kind, target, calib_reference, margin)
        return budget
    held = (held_on_test(chosen, max_cost=target) if kind == "target_cost"
            else held_on_test(chosen, max_drop=target, test_reference=test_reference))
    budget.update(alpha=chosen.param, threshold=chosen.threshold, calib=chosen.calib.as_dict(),
                  test=chosen.test.as_dict(), met_on_test=held)
    budget["message"] = (
        f"alpha={chosen.param:g}, threshold={chosen.threshold:g}: calibration accuracy "
        f"{chosen.calib.accuracy:.2%} at cost {chosen.calib.cost:.3f}; test accuracy "
        f"{chosen.test.accuracy:.2%} at cost {chosen.test.cost:.3f}; budget "
        f"{'held' if held else 'NOT held'} on test"
    )
    return budget
