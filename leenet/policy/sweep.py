"""Gates for every alpha of a sweep, or for budgets, each with out-of-fold calibration figures.

The public entry points (:func:`fit_gates`, :func:`train_gates`, :func:`gates_for_budget`) take
an :class:`~leenet.nn.model.ExitNet` for convenience and read only its gates, gate inputs and
costs (:class:`~leenet.policy.fit.GateProblem`); they never modify it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from leenet.config import GateTrainConfig, check_alpha
from leenet.errors import LeenetError
from leenet.nn.model import ExitNet
from leenet.policy.cache import CachedOutputs
from leenet.policy.fit import GateProblem, fit_loss_gates, loss_gates_out_of_fold
from leenet.policy.objective import exit_losses, objective_alpha
from leenet.policy.predict import check_budget, check_scores, predictor_scores, shifted
from leenet.policy.thresholds import Thresholds, alpha_thresholds, budget_thresholds
from leenet.progress import progress_bar


@dataclass
class GateFit:
    """The gates for one alpha (or budget) and what they do to calibration samples they never saw."""

    gates: nn.ModuleList  # fit on the whole calibration split: what the model ships with
    calib_probs: Tensor | None  # (N, E-1) out-of-fold gate probabilities; None = no held-out estimate
    raw_alpha: float = float("nan")  # the weight of cost in the objective as written (objective_alpha)
    # "predict" only, shared by every alpha of a sweep: the correctness predictors the gates are
    # shifted copies of, and the calibration scores their thresholds were chosen on (what a
    # budget is solved from without fitting them again)
    predictors: nn.ModuleList | None = None
    scores: Tensor | None = None


def fit_gate_sweep(problem: GateProblem, cache: CachedOutputs, alphas: Sequence[float],
                   config: GateTrainConfig = GateTrainConfig(), *, seed: int = 0,
                   inputs: Sequence[Tensor] | None = None, progress: bool = False,
                   fit_on: CachedOutputs | None = None) -> dict[float, GateFit]:
    """Gates for every alpha, each with out-of-fold calibration probabilities.

    Choosing an alpha or a budget on the calibration split needs the gates' behaviour on
    samples they were not fit to: gates judged on their own training samples look surer
    than they are, and a "0.5 point drop" chosen that way becomes 1.5 points on new data.
    With ``config.crossfit = K > 1`` each calibration sample's gate probabilities come from
    gates fit without it: for "predict", the out-of-fold correctness scores against the
    alpha's thresholds; for "soft" and "hard", gates refit on the other K-1 folds. The
    shipped gates are always fit on the whole split.

    ``fit_on`` (with ``config.predictors_on = "train"``): the outputs "predict" fits its
    correctness predictors to, usually the training split's; every calibration score is then
    held out, and no cross-fitting is needed.
    """
    alphas = [check_alpha(a) for a in alphas]
    if (fit_on is not None) != (config.predictors_on == "train"):
        raise LeenetError("predictors fit on the training split need its outputs (fit_on), and only then")
    if problem.num_exits < 2:  # no early exit, nothing to fit
        return {a: GateFit(copy.deepcopy(problem.gates).cpu().eval(), None, a) for a in alphas}
    inputs = list(inputs) if inputs is not None else problem.inputs(cache)
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    if config.objective == "predict":
        # thresholds are chosen on these: held out, else (crossfit = 1) the predictors' own
        predictors, choose_on = predictor_scores(problem, cache, config, seed=seed, fit_on=fit_on, inputs=inputs)
        held_out_scores = fit_on is not None or config.crossfit > 1
    raw_config = replace(config, alpha_units="raw")  # the folds use the whole split's units
    fits = {}
    for alpha in progress_bar(alphas, len(alphas), "gates over alphas", progress):
        raw = objective_alpha(problem.costs.cost, losses, alpha, config)
        if config.objective == "predict":
            found = alpha_thresholds(choose_on, losses, problem.costs, raw)
            held_out = _held_out_probs(choose_on, found) if held_out_scores else None
            fits[alpha] = GateFit(shifted(predictors, found), held_out, raw, predictors, choose_on)
        else:
            gates = fit_loss_gates(problem, cache, raw, raw_config, seed=seed, inputs=inputs)
            held_out = loss_gates_out_of_fold(problem, cache, raw, raw_config, seed=seed, inputs=inputs)
            fits[alpha] = GateFit(gates, held_out, raw)
    return fits


def _held_out_probs(scores: Tensor, thresholds: Thresholds) -> Tensor:
    """(N, E-1) exit probabilities of shifted predictors on held-out scores (0 where a gate is off)."""
    return torch.sigmoid(scores - thresholds.values).masked_fill(~thresholds.enabled, 0.0)


def budget_sweep(problem: GateProblem, fit: GateFit, cache: CachedOutputs, budgets: Iterable[float],
                 config: GateTrainConfig = GateTrainConfig(objective="predict"), *,
                 progress: bool = False) -> dict[float, GateFit]:
    """Gates solving each budget directly, from one "predict" fit of :func:`fit_gate_sweep`.

    An alpha sweep reaches only the corners of the calibration trade-off; solving a budget at
    every step of cost traces the curve between them. ``fit``: any alpha's :class:`GateFit`
    (its predictors and held-out scores are shared). Returns budget → :class:`GateFit` whose
    ``calib_probs`` are the held-out routing (None where the sweep's are), leaving out
    unreachable budgets.
    """
    if fit.predictors is None or fit.scores is None:
        raise LeenetError("a budget sweep needs 'predict' gates (--objective predict)")
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    out = {}
    budgets = [check_budget(b) for b in budgets]
    for budget in progress_bar(budgets, len(budgets), "budgets", progress):
        found = budget_thresholds(fit.scores, losses, problem.costs, budget)
        if found is not None:
            held_out = None if fit.calib_probs is None else _held_out_probs(fit.scores, found)
            out[budget] = GateFit(shifted(fit.predictors, found), held_out, predictors=fit.predictors,
                                  scores=fit.scores)
    return out


def fit_gates(net: ExitNet, cache: CachedOutputs, alphas: Sequence[float],
              config: GateTrainConfig = GateTrainConfig(), *, seed: int = 0, progress: bool = False,
              fit_on: CachedOutputs | None = None) -> dict[float, GateFit]:
    """:func:`fit_gate_sweep` for ``net``'s gates and costs: alpha → :class:`GateFit`."""
    return fit_gate_sweep(GateProblem.of(net), cache, alphas, config, seed=seed, progress=progress, fit_on=fit_on)


def train_gates(net: ExitNet, cache: CachedOutputs, alpha: float, config: GateTrainConfig = GateTrainConfig(),
                *, seed: int = 0) -> nn.ModuleList:
    """Fresh gates for ``net`` fit for one ``alpha`` on cached calibration outputs.

    Args:
        net: supplies the gate architecture and the exit costs; not modified.
        cache: outputs of the frozen network on the calibration split.
        alpha: weight of compute against error, in [0, 1], in ``config.alpha_units``.
        config: objective, loss and optimizer settings.
        seed: seeds the gates' initialization.

    Returns:
        The fitted gates, in eval mode (assign them: ``net.gates = train_gates(...)``).
    """
    alpha, problem = check_alpha(alpha), GateProblem.of(net)
    if config.objective == "predict" or problem.num_exits < 2:
        return fit_gate_sweep(problem, cache, [alpha], config, seed=seed)[alpha].gates
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    raw = objective_alpha(problem.costs.cost, losses, alpha, config)
    return fit_loss_gates(problem, cache, raw, replace(config, alpha_units="raw"), seed=seed)


def predictor_fit(net: ExitNet, cache: CachedOutputs, config: GateTrainConfig, *, seed: int = 0,
                  fit_on: CachedOutputs | None = None) -> tuple[nn.ModuleList, Tensor]:
    """Correctness predictors for ``net``'s gates and their held-out calibration scores (N, E-1),
    what :func:`gates_for_budget` solves budgets from (see :func:`leenet.policy.predict.predictor_scores`)."""
    return predictor_scores(GateProblem.of(net), cache, config, seed=seed, fit_on=fit_on)


def gates_for_budget(net: ExitNet, predictors: nn.ModuleList, cache: CachedOutputs, scores: Tensor, max_cost: float,
                     config: GateTrainConfig = GateTrainConfig(objective="predict")) -> nn.ModuleList | None:
    """Copies of correctness predictors routing as accurately as possible within a mean cost.

    An alpha sweep only reaches the corners of the calibration trade-off's convex hull; a
    budget between two corners gets the cheaper one. This solves the budget itself: per-gate
    thresholds minimizing the calibration loss with mean cost at most ``max_cost`` (held-out
    ``scores`` from :func:`predictor_fit`). None when even the cheapest routing costs more.
    """
    problem = GateProblem.of(net)
    check_scores(scores, cache, problem.num_exits)
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    found = budget_thresholds(scores, losses, problem.costs, check_budget(max_cost))
    return None if found is None else shifted(predictors, found)


def gates_for_alpha(net: ExitNet, predictors: nn.ModuleList, cache: CachedOutputs, alpha: float,
                    config: GateTrainConfig = GateTrainConfig(objective="predict"), *,
                    scores: Tensor | None = None) -> nn.ModuleList:
    """Copies of correctness predictors whose 0.5 decision minimizes the objective at ``alpha``.

    At ``alpha = 0`` the gates never fire: early exits that beat the final one on the
    calibration split rarely do so on new data, and alpha = 0 promises the backbone's accuracy.
    ``scores``: (N, E-1) calibration scores to choose thresholds on (held out, from
    :func:`predictor_fit`); None = the predictors' own (in-sample) scores.
    """
    alpha = check_alpha(alpha)
    problem = GateProblem.of(net)
    if not len(predictors):
        return copy.deepcopy(predictors).eval()
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    raw = objective_alpha(problem.costs.cost, losses, alpha, config)
    if scores is None:
        with torch.no_grad():
            scores = torch.stack([g.logit(x) for g, x in zip(predictors, problem.inputs(cache))], dim=1)
    check_scores(scores, cache, problem.num_exits)
    return shifted(predictors, alpha_thresholds(scores, losses, problem.costs, raw))
