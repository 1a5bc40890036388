"""Exit policies on cached outputs: the objective, gate fitting, thresholds, simulation."""

from leenet.policy.cache import CachedOutputs, collect_outputs
from leenet.policy.fit import GateProblem, fit_loss_gates, fold_splits, fresh_gates, gate_logits, out_of_fold
from leenet.policy.manual import set_gates, set_gates_by_share
from leenet.policy.objective import (
    balanced_bce,
    exit_losses,
    exit_probabilities,
    expected_exit_loss,
    hard_exit_targets,
    objective_alpha,
    range_scale,
    raw_alpha,
)
from leenet.policy.predict import fit_correctness_gates, fit_predictors, predictor_scores, shifted
from leenet.policy.simulate import (
    ABOVE_EVERY_SCORE,
    PolicyResult,
    confidence_scores,
    first_exit,
    gate_probabilities,
    oracle_exits,
    summarize,
    threshold_exits,
    threshold_grid,
)
from leenet.policy.sweep import (
    GateFit,
    budget_sweep,
    fit_gate_sweep,
    fit_gates,
    gates_for_alpha,
    gates_for_budget,
    predictor_fit,
    train_gates,
)
from leenet.policy.thresholds import BUDGET_TIE, Thresholds, alpha_thresholds, budget_thresholds, search_thresholds

__all__ = [
    "ABOVE_EVERY_SCORE", "BUDGET_TIE", "CachedOutputs", "GateFit", "GateProblem", "PolicyResult", "Thresholds",
    "alpha_thresholds", "balanced_bce", "budget_sweep", "budget_thresholds", "collect_outputs", "confidence_scores",
    "exit_losses", "exit_probabilities", "expected_exit_loss", "first_exit", "fit_correctness_gates", "fit_gate_sweep",
    "fit_gates", "fit_loss_gates", "fit_predictors", "fold_splits", "fresh_gates", "gate_logits", "gate_probabilities",
    "gates_for_alpha", "gates_for_budget", "hard_exit_targets", "objective_alpha", "oracle_exits", "out_of_fold",
    "predictor_fit", "predictor_scores", "range_scale", "raw_alpha", "search_thresholds", "set_gates",
    "set_gates_by_share", "shifted", "summarize", "threshold_exits", "threshold_grid", "train_gates",
]
