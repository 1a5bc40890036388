"""Measuring policies on calibration and test, choosing on calibration, comparing curves, timing."""

from leenet.evaluate.compare import (
    BASELINES,
    GAP_TOL,
    envelope_at,
    envelope_gap,
    max_neighbour_jump,
    paired_stderr,
    upper_envelope,
    versus_thresholds,
)
from leenet.evaluate.evaluator import DECISION_THRESHOLDS, Candidate, Evaluator
from leenet.evaluate.select import (
    ACCURACY_DROPS,
    COST_BUDGETS,
    DEFAULT_MAX_DROP,
    best_within_cost,
    cheapest_within_drop,
    choose_saved,
    find_budget,
    held_on_test,
    operating_points,
)
from leenet.evaluate.timing import PlainBackbone, measure_wall_clock, median_seconds

__all__ = [
    "ACCURACY_DROPS", "BASELINES", "COST_BUDGETS", "DECISION_THRESHOLDS", "DEFAULT_MAX_DROP", "GAP_TOL", "Candidate",
    "Evaluator", "PlainBackbone", "best_within_cost", "cheapest_within_drop", "choose_saved", "envelope_at",
    "envelope_gap", "find_budget", "held_on_test", "max_neighbour_jump", "measure_wall_clock", "median_seconds",
    "operating_points", "paired_stderr", "upper_envelope", "versus_thresholds",
]
