"""The one threshold search (leenet.policy.thresholds), against exhaustive search."""

import pytest
from test_sweep import _tiny_cache


def _exhaustive_objective(scores, losses, costs, alpha, options):
    """Slow reference: the best calibration objective over every combination of per-gate options."""
    import itertools

    import torch

    from leenet.policy.simulate import first_exit
    NEVER = float("inf")  # the reference's own "gate off": no score reaches it

    best = float("inf")
    for combo in itertools.product(*options):
        t = torch.tensor(combo)
        exits = first_exit(scores >= t)
        cost = costs.routed(t < NEVER)
        value = float(((1 - alpha) * losses.gather(1, exits[:, None]).squeeze(1) + alpha * cost[exits]).mean())
        best = min(best, value)
    return best


@pytest.mark.parametrize("history", [False, True])
def test_objective_thresholds_switch_off_exits_that_do_not_pay_for_their_head(history):
    """Coordinate descent over thresholds (gates switched off included) matches exhaustive search."""
    import torch

    from leenet.nn.cost import CostModel
    from leenet.policy.simulate import first_exit
    from leenet.policy.thresholds import alpha_thresholds

    gen = torch.Generator().manual_seed(0)
    n = 400
    correct = torch.rand(n, 3, generator=gen) < torch.tensor([0.55, 0.6, 0.85])
    losses = torch.cat([(~correct).float(), torch.zeros(n, 1)], dim=1)  # the final exit is always right
    scores = torch.where(correct, 1.0, -1.0) + torch.randn(n, 3, generator=gen)
    # Exit 2 saves 0.05 over the final exit but its head and gate cost 0.24 for every sample reaching it.
    costs = CostModel(cost=torch.tensor([0.25, 0.45, 1.30, 1.35]), head_cost=torch.tensor([0.05, 0.05, 0.2]),
                       gate_cost=torch.tensor([0.01, 0.01, 0.04]), history=history)
    alpha = 0.4
    found = alpha_thresholds(scores, losses, costs, alpha, grid=9)
    exits = first_exit((scores >= found.values) & found.enabled)
    value = float(((1 - alpha) * losses.gather(1, exits[:, None]).squeeze(1)
                   + alpha * costs.routed(found.enabled)[exits]).mean())
    inf = float("inf")  # -inf: always fire; inf: the gate off
    options = [[-inf, *torch.quantile(scores[:, i], torch.linspace(0, 1, 9)).tolist(), inf] for i in range(3)]
    # at least as good as every combination of per-gate quantiles (it also starts from shared thresholds)
    assert value <= _exhaustive_objective(scores, losses, costs, alpha, options) + 1e-6
    assert not found.enabled[2] and found.enabled[0]


def test_budget_gates_meet_the_budget_and_match_exhaustive_search(tiny_stages, tiny_input):
    """gates_for_budget: within the mean cost on calibration, as accurate as any threshold pair."""
    import itertools

    import torch

    from leenet.config import GateTrainConfig
    from leenet.errors import LeenetError
    from leenet.nn.cost import CostModel
    from leenet.policy.objective import exit_losses
    from leenet.policy.simulate import first_exit, gate_probabilities
    from leenet.policy.sweep import gates_for_alpha, gates_for_budget, predictor_fit
    from leenet.policy.thresholds import BUDGET_TIE
    NEVER = float("inf")  # the reference's own "gate off": no score reaches it

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40, crossfit=1)
    predictors, scores = predictor_fit(net, cache, config, seed=0)
    inputs = cache.gate_inputs(net.gate_config)
    losses = exit_losses(cache.logits, cache.labels, "error")
    # slow reference: every threshold of the first two gates (the third never fires)
    values = [torch.cat([torch.tensor([-NEVER]), scores[:, i].unique(), torch.tensor([NEVER])]) for i in range(2)]
    reference = []
    for t0, t1 in itertools.product(*values):
        thresholds = torch.tensor([t0, t1, NEVER])
        exits = first_exit(scores >= thresholds)
        cost = CostModel.of(net).routed(thresholds < NEVER)[exits].mean()
        reference.append((float(cost), float(losses.gather(1, exits[:, None]).mean())))
    for budget in (0.25, 0.4, 0.6, 0.9):
        gates = gates_for_budget(net, predictors, cache, scores, budget, config)
        exits = first_exit(gate_probabilities(gates, inputs) >= 0.5)
        assert float(net.routed_cost(gates)[exits].mean()) <= budget + 1e-6
        best = min(loss for cost, loss in reference if cost <= budget + 1e-9)
        loss = float(losses.gather(1, exits[:, None]).mean())
        assert loss <= best + BUDGET_TIE + 1e-6
    # every exit equally right: of equally good routings the dearest within the budget is kept
    same = type(cache)(cache.logits[:, :1].expand_as(cache.logits), cache.pooled, cache.labels)
    for budget, cost in ((2.0, 1.03), (0.45, 0.45)):
        gates = gates_for_budget(net, predictors, same, scores, budget, config)
        exits = first_exit(gate_probabilities(gates, inputs) >= 0.5)
        assert float(net.routed_cost(gates)[exits].mean()) == pytest.approx(cost, abs=0.02)
    assert gates_for_budget(net, predictors, cache, scores, 0.1, config) is None  # below the first exit
    # exactly the first exit's cost (float32 means of it may round up) is a budget that fits
    assert gates_for_budget(net, predictors, cache, scores, float(net.cost[0]), config) is not None
    for bad in (float("nan"), 0.0, -1.0, None, "half"):
        with pytest.raises(LeenetError, match="budget"):
            gates_for_budget(net, predictors, cache, scores, bad, config)
    nan_scores = scores.clone()
    nan_scores[0, 0] = float("nan")
    for bad, match in ((scores[:5], "shape"), (scores[:, :1], "shape"), (None, "shape"), (nan_scores, "NaN")):
        with pytest.raises(LeenetError, match=match):
            gates_for_budget(net, predictors, cache, bad, 0.5, config)
        if bad is not None:  # gates_for_alpha without scores uses the predictors' own
            with pytest.raises(LeenetError, match=match):
                gates_for_alpha(net, predictors, cache, 0.5, config, scores=bad)
