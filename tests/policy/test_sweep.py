"""Gate fitting on cached outputs (leenet.policy.fit, .predict, .sweep), against slow references."""

import math

import pytest

from leenet.policy.fit import GateProblem


def _tiny_cache(tiny_stages, tiny_input):
    import torch

    from leenet.config import GateConfig
    from leenet.nn.model import ExitNet
    from leenet.policy.cache import CachedOutputs

    from conftest import INPUT_SHAPE, NUM_CLASSES

    net = ExitNet.from_stages(tiny_stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                              gate_config=GateConfig(pooled=True))
    net.cost.copy_(torch.tensor([0.2, 0.45, 0.7, 1.03]))
    net.head_cost.copy_(torch.tensor([0.01, 0.01, 0.01]))  # three heads make the final exit cost 1.03
    net.gate_cost.zero_()
    net.eval()
    with torch.no_grad():
        out = net.forward_all(tiny_input)
    labels = torch.where(torch.arange(len(tiny_input)) % 3 == 0, 0, out.logits[:, -1].argmax(-1))
    return net, CachedOutputs(out.logits, out.pooled, labels)


@pytest.mark.parametrize("loss", ["error", "ce"])
def test_predict_gates_never_lose_on_calibration(tiny_stages, tiny_input, loss):
    """'predict' gates beat never/always exiting on the calibration objective; alpha = 0 never exits."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.policy.fit import GateProblem
    from leenet.policy.objective import exit_losses
    from leenet.policy.predict import fit_correctness_gates
    from leenet.policy.simulate import first_exit, gate_probabilities
    from leenet.policy.sweep import gates_for_alpha, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss=loss, steps=50, crossfit=1,  # in-sample: exact optimum
                             alpha_units="raw")  # of the objective as written
    inputs = cache.gate_inputs(net.gate_config)
    predictors = fit_correctness_gates(GateProblem.of(net), cache, config, seed=0, inputs=inputs)
    losses = exit_losses(cache.logits, cache.labels, loss)
    for alpha in (0.0, 0.3, 1.0):
        gates = gates_for_alpha(net, predictors, cache, alpha, config)
        exits = first_exit(gate_probabilities(gates, inputs) >= 0.5)
        value = ((1 - alpha) * losses + alpha * net.routed_cost(gates)[None]).gather(1, exits[:, None]).mean()
        if alpha == 0.0:  # compute is free: everyone runs to the backbone's exit, which costs the backbone
            assert exits.eq(len(net.cost) - 1).all() and not net.enabled_exits(gates).any()
            assert float(net.routed_cost(gates)[-1]) == pytest.approx(1.0)
            continue
        never = ((1 - alpha) * losses[:, -1] + alpha * 1.0).mean()  # no gate, no head: the plain backbone
        always = ((1 - alpha) * losses[:, 0] + alpha * net.cost[0]).mean()
        assert value <= never + 1e-6 and value <= always + 1e-6
        if alpha == 1.0:
            assert exits.eq(0).all()
    again = train_gates(net, cache, 0.3, config, seed=0)
    ref = gates_for_alpha(net, predictors, cache, 0.3, config)
    assert torch.equal(gate_probabilities(again, inputs), gate_probabilities(ref, inputs))


def test_crossfit_scores_are_out_of_fold(tiny_stages, tiny_input):
    """Each calibration sample is scored by a predictor that never saw it; train_gates uses them."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.policy.fit import GateProblem
    from leenet.policy.predict import fit_correctness_gates, predictor_scores
    from leenet.policy.simulate import gate_probabilities
    from leenet.policy.sweep import gates_for_alpha, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=50, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    predictors = fit_correctness_gates(GateProblem.of(net), cache, config, seed=0, inputs=inputs)
    scores = predictor_scores(GateProblem.of(net), cache, config, seed=0)[1]
    in_sample = torch.stack([g.logit(x) for g, x in zip(predictors, inputs)], dim=1).detach()
    assert scores.shape == in_sample.shape and not torch.allclose(scores, in_sample)
    once = GateTrainConfig(objective="predict", loss="error", steps=50, crossfit=1)
    own, own_scores = predictor_scores(GateProblem.of(net), cache, once, seed=0)  # crossfit 1: in-sample
    torch.testing.assert_close(own_scores, torch.stack([g.logit(x) for g, x in zip(own, inputs)], dim=1).detach())
    ref = gates_for_alpha(net, predictors, cache, 0.3, config, scores=scores)
    again = train_gates(net, cache, 0.3, config, seed=0)
    assert torch.equal(gate_probabilities(again, inputs), gate_probabilities(ref, inputs))


def test_gate_sweep_calibration_probabilities_are_out_of_fold(tiny_stages, tiny_input):
    """'soft' sweeps: each calibration sample's probabilities come from gates fit without its fold."""
    import dataclasses

    import torch

    from leenet.config import GateTrainConfig
    from leenet.errors import LeenetError
    from leenet.policy.cache import CachedOutputs
    from leenet.policy.fit import fold_splits as _fold_splits
    from leenet.policy.objective import exit_losses, range_scale, raw_alpha
    from leenet.policy.simulate import gate_probabilities
    from leenet.policy.sweep import fit_gates, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="soft", loss="error", steps=30, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    fits = fit_gates(net, cache, [0.2, 0.6], config, seed=3)
    splits = _fold_splits(len(cache.labels), 2, 3)
    held_total = torch.cat([held for _, held in splits]).sort().values
    assert torch.equal(held_total, torch.arange(len(cache.labels)))  # every sample held out exactly once
    losses = exit_losses(cache.logits, cache.labels, "error")
    for alpha, fit in fits.items():
        assert fit.raw_alpha == pytest.approx(raw_alpha(alpha, range_scale(losses, net.cost)))
        shipped = train_gates(net, cache, alpha, config, seed=3)  # the model's gates see all of calibration
        assert torch.equal(gate_probabilities(fit.gates, inputs), gate_probabilities(shipped, inputs))
        for k, (fit_idx, held) in enumerate(splits):  # slow reference: refit on the other fold by hand
            part = CachedOutputs(cache.logits[fit_idx], [p[fit_idx] for p in cache.pooled], cache.labels[fit_idx])
            raw = dataclasses.replace(config, alpha_units="raw")  # folds keep the whole split's alpha units
            gates = train_gates(net, part, fit.raw_alpha, raw, seed=3 + 1 + k)
            expected = gate_probabilities(gates, [x[held] for x in inputs])
            torch.testing.assert_close(fit.calib_probs[held], expected)
    in_sample = fit_gates(net, cache, [0.2], GateTrainConfig(steps=5, crossfit=1))
    assert in_sample[0.2].calib_probs is None
    one = CachedOutputs(cache.logits[:1], [p[:1] for p in cache.pooled], cache.labels[:1])
    for objective in ("soft", "predict"):  # one sample cannot be held out from itself
        with pytest.raises(LeenetError, match="at least 2 calibration samples"):
            fit_gates(net, one, [0.5], GateTrainConfig(objective=objective, steps=5, crossfit=2))


def test_gate_sweep_predict_moves_out_of_fold_scores_by_the_shipped_shift(tiny_stages, tiny_input):
    """'predict': held-out probabilities are the out-of-fold scores against the same thresholds."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.policy.fit import GateProblem
    from leenet.policy.predict import fit_correctness_gates, predictor_scores
    from leenet.policy.sweep import fit_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    fits = fit_gates(net, cache, [0.0, 0.4], config, seed=1)
    assert fits[0.0].calib_probs.max() == 0  # alpha = 0: nobody leaves early
    predictors = fit_correctness_gates(GateProblem.of(net), cache, config, seed=1, inputs=inputs)
    oof = predictor_scores(GateProblem.of(net), cache, config, seed=1)[1]
    in_sample = torch.stack([g.logit(x) for g, x in zip(predictors, inputs)], dim=1).detach()
    fit = fits[0.4]
    shipped_shift = in_sample - torch.stack([g.logit(x) for g, x in zip(fit.gates, inputs)], dim=1).detach()
    held_shift = oof - torch.logit(fit.calib_probs.double()).float()
    finite = fit.calib_probs.gt(1e-4) & fit.calib_probs.lt(1 - 1e-4)  # float32 sigmoid inverts well here
    torch.testing.assert_close(held_shift[finite], shipped_shift[finite], atol=5e-3, rtol=0)
    assert torch.allclose(shipped_shift, shipped_shift[:1].expand_as(shipped_shift), atol=1e-4)


def test_evaluator_calibration_accuracy_is_the_lower_of_own_and_held_out(tiny_stages, tiny_input):
    import torch

    from leenet.config import GateTrainConfig
    from leenet.evaluate.evaluator import Evaluator
    from leenet.policy.sweep import fit_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    fit = fit_gates(net, cache, [0.3], GateTrainConfig(steps=20), seed=0)[0.3]
    ev = Evaluator(cache, cache, net.cost)
    own = ev.leenet(0.3, fit.gates, net.gate_config)[0]
    for exit_ in range(net.num_exits):  # held-out routing sends everybody to one exit
        routed = torch.zeros_like(fit.calib_probs)
        routed[:, exit_:] = 1.0
        c = ev.leenet(0.3, fit.gates, net.gate_config, calib_probs=routed)[0]
        held_out = float(cache.correct[:, exit_].float().mean())
        # accuracy: the lower of the gates' own and the held-out routing's
        assert c.calib.accuracy == pytest.approx(min(held_out, own.calib.accuracy))
        # cost and exit fractions are the shipped gates' own: they do not depend on labels
        assert (c.calib.cost, c.calib.exit_fractions) == (own.calib.cost, own.calib.exit_fractions)
        assert c.test == own.test


def test_soft_gates_that_do_not_pay_for_their_head_are_switched_off():
    import torch
    from torch import nn

    from leenet.nn.cost import CostModel
    from leenet.nn.gates import Gate
    from leenet.policy.fit import switch_off_unpaid_exits as _switch_off_unpaid_exits
    from leenet.policy.simulate import first_exit

    n = 100
    inputs = [torch.arange(n, dtype=torch.float32)[:, None]] * 2
    gates = nn.ModuleList([Gate(1, hidden=0), Gate(1, hidden=0)])
    with torch.no_grad():  # gate 0 fires for samples 0-49, gate 1 for samples 95-99 only
        gates[0].mlp[0].weight.fill_(-1.0), gates[0].mlp[0].bias.fill_(49.5)
        gates[1].mlp[0].weight.fill_(1.0), gates[1].mlp[0].bias.fill_(-94.5)
    losses = torch.zeros(n, 3)  # every exit right: only cost matters
    costs = CostModel(cost=torch.tensor([0.3, 0.8, 1.2]), head_cost=torch.tensor([0.05, 0.15]),
                       gate_cost=torch.zeros(2), history=False)
    _switch_off_unpaid_exits(gates, inputs, losses, costs, alpha=0.5)
    assert [bool(g.enabled) for g in gates] == [True, False]  # exit 1 saves 5 x 0.4, its head costs 50 x 0.15
    exits = first_exit(torch.stack([g(x) for g, x in zip(gates, inputs)], 1) >= 0.5)
    assert exits.tolist() == [0] * 50 + [2] * 50


def test_gate_sweep_predictors_fit_on_another_split_score_calibration_held_out(tiny_stages, tiny_input):
    """predictors_on="train": fit on fit_on's outputs; calibration scores are theirs, no folds."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.errors import LeenetError
    from leenet.policy.fit import GateProblem
    from leenet.policy.fit import gate_logits as _gate_logits
    from leenet.policy.predict import fit_correctness_gates
    from leenet.policy.simulate import gate_probabilities
    from leenet.policy.sweep import fit_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    half = len(cache.labels) // 2
    train, calib = (type(cache)(cache.logits[s], [p[s] for p in cache.pooled], cache.labels[s])
                    for s in (slice(None, half), slice(half, None)))
    config = GateTrainConfig(objective="predict", loss="error", steps=40, predictors_on="train")
    fits = fit_gates(net, calib, [0.0, 0.4], config, seed=2, fit_on=train)
    predictors = fit_correctness_gates(GateProblem.of(net), train, config, seed=2)  # never saw a calibration sample
    inputs = calib.gate_inputs(net.gate_config)
    with torch.no_grad():
        scores = _gate_logits(predictors, inputs)
        shipped = _gate_logits(fits[0.4].gates, inputs)
    shift = scores - shipped  # the shipped gates are the predictors moved by a per-gate threshold
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-4)
    for fit in fits.values():  # the shipped gates never saw calibration: their own figures are held out
        torch.testing.assert_close(fit.calib_probs, gate_probabilities(fit.gates, inputs))
    assert fits[0.0].calib_probs.max() == 0
    # every alpha shares the predictors and the calibration scores it chose thresholds on
    assert fits[0.0].predictors is fits[0.4].predictors and fits[0.0].scores is fits[0.4].scores
    with torch.no_grad():
        torch.testing.assert_close(fits[0.4].scores, _gate_logits(fits[0.4].predictors, inputs))
        torch.testing.assert_close(fits[0.4].scores, scores, atol=1e-4, rtol=0)  # the same fit as above
    with pytest.raises(LeenetError, match="fit_on"):
        fit_gates(net, calib, [0.4], config, seed=2)  # no training outputs given
    with pytest.raises(LeenetError, match="fit_on"):
        fit_gates(net, calib, [0.4], GateTrainConfig(objective="predict"), fit_on=train)


def test_minibatch_predictor_fitting_learns_what_full_batch_learns(tiny_stages, tiny_input):
    import torch

    from leenet.config import GateTrainConfig
    from leenet.policy.fit import GateProblem
    from leenet.policy.fit import gate_logits as _gate_logits
    from leenet.policy.predict import fit_correctness_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    inputs = cache.gate_inputs(net.gate_config)
    aucs = {}
    for batch in (0, 16):
        config = GateTrainConfig(objective="predict", steps=200, batch_size=batch)
        predictors = fit_correctness_gates(GateProblem.of(net), cache, config, seed=0)
        with torch.no_grad():
            scores = _gate_logits(predictors, inputs)
        correct = cache.correct[:, :-1]
        # rank agreement with correctness: P(score of a right sample > score of a wrong one), per gate
        aucs[batch] = [float((scores[correct[:, i], i][:, None] > scores[~correct[:, i], i][None]).float().mean())
                       for i in range(scores.shape[1]) if 0 < correct[:, i].sum() < len(correct)]
    assert min(aucs[16]) > 0.75 and min(aucs[0]) > 0.75


def test_predictors_fit_on_the_training_split_default_to_minibatches(tiny_stages, tiny_input, monkeypatch):
    """batch_size 0 means the whole split for calibration fits, TRAIN_SPLIT_BATCH for training-split fits."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.policy import predict as train_module
    from leenet.policy.fit import GateProblem
    from leenet.policy.fit import gate_logits as _gate_logits
    from leenet.policy.predict import fit_correctness_gates

    monkeypatch.setattr(train_module, "TRAIN_SPLIT_BATCH", 16)
    net, cache = _tiny_cache(tiny_stages, tiny_input)
    inputs = cache.gate_inputs(net.gate_config)

    def scores(**kwargs):
        config = GateTrainConfig(objective="predict", steps=30, **kwargs)
        predictors = fit_correctness_gates(GateProblem.of(net), cache, config)
        with torch.no_grad():
            return _gate_logits(predictors, inputs)

    default_train = scores(predictors_on="train")
    torch.testing.assert_close(default_train, scores(predictors_on="train", batch_size=16))
    torch.testing.assert_close(scores(), scores(batch_size=len(cache.labels)))  # calibration: full batch
    assert not torch.allclose(default_train, scores())


@pytest.mark.parametrize("kwargs, match", [({"predictors_on": "test"}, "predictor split"),
                                           ({"predictors_on": "train", "objective": "soft"}, "--objective predict"),
                                           ({"batch_size": -1}, "batch size"),
                                           ({"lr": float("nan")}, "finite lr"), ({"lr": 0.0}, "finite lr"),
                                           ({"weight_decay": float("nan")}, "weight decay")])
def test_gate_train_config_rejects_bad_predictor_settings(kwargs, match):
    from leenet.config import GateTrainConfig
    from leenet.errors import LeenetError

    with pytest.raises(LeenetError, match=match):
        GateTrainConfig(**kwargs)


def test_budget_sweep_solves_each_budget_from_the_alpha_sweep(tiny_stages, tiny_input):
    """budget_sweep: gates_for_budget at every budget, from a sweep's shared predictors and held-out scores."""
    import torch

    from leenet.config import GateTrainConfig
    from leenet.errors import LeenetError
    from leenet.policy.fit import GateProblem
    from leenet.policy.simulate import first_exit, gate_probabilities
    from leenet.policy.sweep import budget_sweep, fit_gates, gates_for_budget

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40)  # 2 folds: held-out scores
    fit = fit_gates(net, cache, [0.0, 0.5], config, seed=0)[0.0]
    inputs = cache.gate_inputs(net.gate_config)
    sweep = budget_sweep(GateProblem.of(net), fit, cache, [0.1, 0.3, 0.6, 0.9], config)
    assert list(sweep) == [0.3, 0.6, 0.9]  # 0.1 is below the first exit's cost: left out
    for budget, solved in sweep.items():
        direct = gates_for_budget(net, fit.predictors, cache, fit.scores, budget, config)
        assert torch.equal(gate_probabilities(solved.gates, inputs), gate_probabilities(direct, inputs))
        # the held-out routing (what the thresholds were chosen on) meets the budget
        exits = first_exit(solved.calib_probs >= 0.5)
        assert float(net.routed_cost(solved.gates)[exits].mean()) <= budget + 1e-6
    with pytest.raises(LeenetError, match="budget"):
        budget_sweep(GateProblem.of(net), fit, cache, [0.5, float("nan")], config)
    soft = fit_gates(net, cache, [0.5], GateTrainConfig(steps=5), seed=0)[0.5]
    with pytest.raises(LeenetError, match="predict"):
        budget_sweep(GateProblem.of(net), soft, cache, [0.5])


def test_budget_curve_is_the_budget_sweep_on_a_grid_of_costs(tiny_stages, tiny_input):
    """Evaluator.budget_curve: a budget every ``step`` from the first exit's cost to 1, each measured like any gates."""
    from leenet.config import GateTrainConfig
    from leenet.evaluate.evaluator import Evaluator
    from leenet.policy.sweep import budget_sweep, fit_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40)
    fit = fit_gates(net, cache, [0.0], config, seed=0)[0.0]
    ev = Evaluator.of(net, cache, cache)
    curve = ev.budget_curve(GateProblem.of(net), fit, config, 0.1)
    first = math.ceil(float(net.cost[0]) * 1e6) / 1e6  # rounded up: the first exit's own cost is a budget it meets
    grid = [round(first + 0.1 * k, 6) for k in range(len(curve))]
    assert curve[0].param == first and curve[0].calib.cost <= first  # everybody out at the first exit
    assert [c.param for c in curve] == grid and grid[-1] <= 1.0 < grid[-1] + 0.1
    assert {c.method for c in curve} == {"leenet_budget"}
    for candidate, (budget, solved) in zip(curve, budget_sweep(GateProblem.of(net), fit, cache, grid, config).items()):
        (direct,) = ev.leenet(budget, solved.gates, net.gate_config, calib_probs=solved.calib_probs)
        assert candidate.calib == direct.calib and candidate.test == direct.test
        assert candidate.test.cost <= budget + 1e-6  # test split = calibration split here
