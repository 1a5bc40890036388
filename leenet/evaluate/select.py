"""Choosing on calibration: budgets, operating points, and the setting the saved model keeps.

A choice looks only at calibration figures, keeping ``margin`` standard errors of slack so
that it holds on new data; the test figures of what was chosen are what gets reported.
"""

from __future__ import annotations

from collections.abc import Iterable

from leenet.config import BUDGET_MARGIN, check_margin
from leenet.errors import LeenetError
from leenet.evaluate.evaluator import Candidate

COST_BUDGETS = (0.25, 0.5, 0.75, 1.0)  # the report's operating points: accuracy at these shares of FLOPs
ACCURACY_DROPS = (0.005, 0.01)  # ... and cost at these accuracy drops


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
        calib_reference: the full backbone's accuracy on the calibration split.
        test_reference: the full backbone's accuracy on the test split.
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


DEFAULT_MAX_DROP = 0.005  # how the saved model's alpha is chosen when none is asked for


def choose_saved(family: list[Candidate], curve: list[Candidate], *, alpha: float | None, threshold: float,
                 target_cost: float | None, max_drop: float | None, calib_reference: float,
                 test_reference: float, margin: float = BUDGET_MARGIN) -> tuple[dict, dict | None]:
    """The setting (alpha, decision threshold) the saved model keeps, and the budget's outcome.

    A budget (``target_cost`` or ``max_drop``) is met on calibration from every (alpha,
    threshold) of ``family`` where it is reachable; else ``alpha`` when given; else the
    cheapest alpha of ``curve`` (the sweep at the network's own ``threshold``) within
    :data:`DEFAULT_MAX_DROP` of the backbone on calibration, or the smallest alpha if none is.

    Returns:
        ``{"alpha", "threshold", "reason"}`` and the budget's :func:`find_budget` dict (None
        without a budget).
    """
    refs = {"calib_reference": calib_reference, "test_reference": test_reference, "margin": margin}
    budget, chosen = None, None
    if target_cost is not None or max_drop is not None:
        budget = find_budget(family, target_cost=target_cost, max_drop=max_drop, **refs)
        if budget["reachable"]:
            chosen = {"alpha": budget["alpha"], "threshold": budget["threshold"], "reason": "budget: " + budget["message"]}
    if chosen is None and alpha is not None:
        chosen = {"alpha": alpha, "threshold": threshold, "reason": f"alpha={alpha:g} from --alpha"}
    if chosen is None:
        default = find_budget(curve, max_drop=DEFAULT_MAX_DROP, **refs)
        best = default["alpha"] if default["reachable"] else min(c.param for c in curve)
        chosen = {"alpha": best, "threshold": threshold,
                  "reason": f"cheapest alpha within {DEFAULT_MAX_DROP * 100:g} pt of the backbone on calibration"}
    return chosen, budget
