"""The "predict" objective: gates that predict their exit's correctness once (alpha-free), then
per-gate thresholds on those scores chosen for each alpha or budget (:mod:`leenet.policy.thresholds`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import TRAIN_SPLIT_BATCH, GateTrainConfig
from leenet.errors import LeenetError
from leenet.policy.cache import CachedOutputs
from leenet.policy.fit import GateProblem, fresh_gates, gate_logits, out_of_fold
from leenet.policy.thresholds import Thresholds


def fit_predictors(gates: nn.ModuleList, inputs: Sequence[Tensor], correct: Tensor,
                    config: GateTrainConfig) -> None:
    """Fit each gate's logit to predict whether its exit is right (plain BCE, full or minibatch)."""
    optimizer = torch.optim.AdamW(gates.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gates.train()
    n = len(correct)
    batch = config.batch_size or (TRAIN_SPLIT_BATCH if config.predictors_on == "train" else n)
    batch = min(batch, n)
    gen = torch.Generator().manual_seed(0)
    order, pos = None, n
    for _ in range(config.steps):
        idx = slice(None)
        if batch < n:
            if pos + batch > n:  # a fresh shuffle for each pass over the data
                order, pos = torch.randperm(n, generator=gen), 0
            idx, pos = order[pos: pos + batch], pos + batch
        scores = gate_logits(gates, [x[idx] for x in inputs])
        loss = F.binary_cross_entropy_with_logits(scores, correct[idx, : scores.shape[1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def fit_correctness_gates(problem: GateProblem, cache: CachedOutputs, config: GateTrainConfig, *, seed: int = 0,
                          inputs: Sequence[Tensor] | None = None) -> nn.ModuleList:
    """Fresh gates fit to predict whether their exit is right (no alpha involved).

    Gate ``i``'s output is then an estimate of P(exit ``i`` is correct | its inputs), a
    confidence score that may use the history of earlier exits and pooled features;
    :func:`gates_for_alpha` turns it into exit decisions for any alpha in milliseconds.
    """
    inputs = list(inputs) if inputs is not None else problem.inputs(cache)
    gates = fresh_gates(problem, inputs, seed)
    if len(gates):
        fit_predictors(gates, inputs, cache.correct.float(), config)
    return gates.eval()


def predictor_scores(problem: GateProblem, cache: CachedOutputs, config: GateTrainConfig, *, seed: int = 0,
                     fit_on: CachedOutputs | None = None,
                     inputs: Sequence[Tensor] | None = None) -> tuple[nn.ModuleList, Tensor]:
    """Correctness predictors and the held-out calibration scores (N, E-1) to set thresholds on.

    Fit on ``fit_on`` (then every calibration score is held out), else on the calibration
    split ``cache`` with out-of-fold scores (in-sample when ``config.crossfit = 1``): thresholds
    chosen on the very scores a predictor was fit to are optimistic (it is surest exactly where
    it memorized the calibration samples), so accuracy budgets would fail on new data.
    """
    inputs = list(inputs) if inputs is not None else problem.inputs(cache)
    if fit_on is not None:
        predictors = fit_correctness_gates(problem, fit_on, config, seed=seed)
    else:
        predictors = fit_correctness_gates(problem, cache, config, seed=seed, inputs=inputs)
        if config.crossfit > 1 and problem.num_exits > 1:
            correct = cache.correct.float()

            def fit_and_score(fit: Tensor, held: Tensor, k: int) -> Tensor:
                gates = fresh_gates(problem, [x[fit] for x in inputs], seed + 1 + k)
                fit_predictors(gates, [x[fit] for x in inputs], correct[fit], config)
                with torch.no_grad():
                    return gate_logits(gates, [x[held] for x in inputs])

            scores = out_of_fold(len(cache.labels), config.crossfit, seed, fit_and_score, problem.num_exits - 1)
            return predictors, scores
    with torch.no_grad():
        return predictors, gate_logits(predictors, inputs)


def shifted(predictors: nn.ModuleList, thresholds: Thresholds) -> nn.ModuleList:
    """Copies of the predictors whose logit crosses 0 where the original crosses ``thresholds``;
    gates the thresholds disable are switched off (their exit's head can then be skipped)."""
    gates = copy.deepcopy(predictors)
    with torch.no_grad():
        for gate, value, on in zip(gates, thresholds.values.tolist(), thresholds.enabled.tolist()):
            gate.enabled.fill_(on)
            if on:
                gate.mlp[-1].bias.sub_(value)
    return gates.eval()


def check_scores(scores: Tensor, cache: CachedOutputs, num_exits: int) -> None:
    """Gate scores to choose thresholds on: finite, one row per calibration sample, one column per gate."""
    want = (len(cache.labels), num_exits - 1)
    if not isinstance(scores, Tensor) or tuple(scores.shape) != want:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise LeenetError(f"gate scores must be a tensor of shape {want} (calibration samples, gates), got {got}: "
                          f"pass the scores predictor_scores returned for this cache")
    if not torch.isfinite(scores).all():
        raise LeenetError("gate scores contain NaN or infinite values: refit the predictors (predictor_scores)")


def check_budget(max_cost: float) -> float:
    """A budget is a finite mean cost > 0 (a share of the backbone's FLOPs)."""
    try:
        max_cost = float(max_cost)
    except (TypeError, ValueError):
        max_cost = float("nan")  # not a number at all: the same message
    if not max_cost > 0.0 or max_cost == float("inf"):  # also NaN
        raise LeenetError(f"a budget is a mean cost > 0 (a share of the backbone's FLOPs, e.g. 0.5), got {max_cost}")
    return max_cost
