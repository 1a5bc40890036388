"""Envelope comparison against slow, obviously-correct references."""

import numpy as np
import pytest

from leenet.compare import envelope_at, envelope_gap, max_neighbour_jump, paired_stderr, upper_envelope


def _slow_env(points, c):
    fits = [a for cost, a in points if cost <= c]
    return max(fits) if fits else 0.0


def _random_points(rng, n):
    return [(float(c), float(a)) for c, a in zip(rng.uniform(0.1, 1.0, n), rng.uniform(0.5, 1.0, n))]


def test_upper_envelope_is_the_pareto_staircase():
    points = [(0.5, 0.9), (0.2, 0.8), (0.3, 0.7), (0.5, 0.85), (0.9, 0.88), (1.0, 0.95), (0.2, 0.6)]
    assert upper_envelope(points) == [(0.2, 0.8), (0.5, 0.9), (1.0, 0.95)]
    assert upper_envelope([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_envelope_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    points = _random_points(rng, 30)
    env = upper_envelope(points)
    grid = np.linspace(0.0, 1.1, 500)
    assert np.allclose(envelope_at(env, grid), [_slow_env(points, c) for c in grid])


@pytest.mark.parametrize("seed", range(5))
def test_envelope_gap_matches_dense_integration(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_points(rng, 25), _random_points(rng, 25)
    lo, hi = 0.15, 1.0
    out = envelope_gap(a, b, lo, hi)
    n = 200_000
    grid = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    gap = np.array([_slow_env(a, c) - _slow_env(b, c) for c in grid[::100]])
    dense = np.repeat(gap, 100)
    assert out["area"] == pytest.approx(dense.mean() * (hi - lo), abs=2e-3)
    assert out["area_below"] == pytest.approx(np.minimum(dense, 0).mean() * (hi - lo), abs=2e-3)
    assert out["worst_gap"] == pytest.approx(gap.min(), abs=1e-9) or out["worst_gap"] <= gap.min()
    assert out["worst_gap"] == pytest.approx(_slow_env(a, out["worst_cost"]) - _slow_env(b, out["worst_cost"]))
    assert out["wins_everywhere"] == (out["worst_gap"] >= 0)


def test_envelope_gap_exact_case():
    a = [(0.2, 0.9), (0.6, 0.95)]
    b = [(0.2, 0.85), (0.4, 0.97)]
    out = envelope_gap(a, b, 0.2, 1.0)
    assert out["area"] == pytest.approx(0.05 * 0.2 - 0.07 * 0.2 - 0.02 * 0.4)
    assert out["worst_cost"] == pytest.approx(0.4) and out["worst_gap"] == pytest.approx(-0.07)
    with pytest.raises(ValueError):
        envelope_gap(a, b, 1.0, 1.0)


def test_paired_stderr_known_value():
    # differences (0, 1, 0, 0): variance 3/16 over 4 samples
    assert paired_stderr([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(np.sqrt(3 / 16 / 4))
    assert paired_stderr([1, 0, 1], [1, 0, 1]) == 0.0


def _slow_member(points, c, tol):
    """Index of the most accurate point costing at most c + tol, the cheapest on ties."""
    fits = [i for i, (cost, _) in enumerate(points) if cost <= c + tol]
    return max(fits, key=lambda i: (points[i][1], -points[i][0])) if fits else None


@pytest.mark.parametrize("seed", range(4))
def test_envelope_gap_significance_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n, tol, lo, hi = 400, 0.002, 0.15, 1.0
    ours, theirs = rng.random((20, n)) < rng.uniform(0.6, 0.95, (20, 1)), rng.random((25, n)) < 0.8
    a = [(float(c), float(o.mean())) for c, o in zip(rng.uniform(0.1, 1.0, 20), ours)]
    b = [(float(c), float(o.mean())) for c, o in zip(rng.uniform(0.1, 1.0, 25), theirs)]
    if seed % 2:  # both families have a point at every cost compared
        lo = max(min(c for c, _ in a), min(c for c, _ in b))
    out = envelope_gap(a, b, lo, hi, tol, outcomes=(ours, theirs))
    assert not (seed % 2 and np.isnan(out["worst_stderr"]))
    assert {k: v for k, v in out.items() if k in envelope_gap(a, b, lo, hi, tol)} == envelope_gap(a, b, lo, hi, tol)
    costs = sorted({lo, *(c - tol for c, _ in a + b if lo < c - tol < hi)})
    z_ref = []
    for c in costs:
        i, j = _slow_member(a, c, tol), _slow_member(b, c, tol)
        if i is None or j is None:
            continue
        d = ours[i].astype(float) - theirs[j].astype(float)
        se = np.sqrt(np.mean((d - d.mean()) ** 2) / n)
        z_ref.append((d.mean() / se if se > 0 else 0.0, c, d.mean()))
    z, c, gap = min(z_ref)
    assert out["min_z"] == pytest.approx(z) and out["min_z_cost"] == pytest.approx(c)
    assert out["min_z_gap"] == pytest.approx(gap)
    i, j = _slow_member(a, out["worst_cost"], tol), _slow_member(b, out["worst_cost"], tol)
    if i is None or j is None:  # one family offers nothing there: no paired error
        assert np.isnan(out["worst_stderr"])
    else:
        d = ours[i].astype(float) - theirs[j].astype(float)
        assert out["worst_stderr"] == pytest.approx(np.sqrt(np.mean((d - d.mean()) ** 2) / n))


def test_envelope_gap_rejects_outcomes_that_do_not_match_the_points():
    with pytest.raises(ValueError, match="one row per point"):
        envelope_gap([(0.5, 0.5)], [(0.5, 0.5)], 0.1, 1.0, outcomes=(np.ones((2, 4)), np.ones((1, 4))))


def test_envelopes_refuse_nonfinite_points_and_ranges():
    """A NaN accuracy would hide every later point of an envelope; a NaN cost would sort anywhere."""
    for points in ([(0.5, float("nan")), (0.6, 0.9)], [(float("nan"), 0.9), (0.6, 0.8)]):
        with pytest.raises(ValueError, match="finite"):
            upper_envelope(points)
        with pytest.raises(ValueError, match="finite"):
            envelope_gap(points, [(0.6, 0.9)], 0.1, 1.0)
    for lo, hi in ((0.1, float("inf")), (float("nan"), 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="lo < hi"):
            envelope_gap([(0.5, 0.9)], [(0.6, 0.9)], lo, hi)


def test_max_neighbour_jump():
    assert max_neighbour_jump([1.0, 0.9, 0.5, 0.45]) == pytest.approx(0.4)
    assert max_neighbour_jump([0.3]) == 0.0


def _tiny_cache(tiny_stages, tiny_input):
    import torch

    from conftest import INPUT_SHAPE, NUM_CLASSES
    from leenet.heads import GateConfig
    from leenet.model import ExitNet
    from leenet.policies import CachedOutputs

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

    from leenet.objective import exit_losses
    from leenet.policies import first_exit, gate_probabilities
    from leenet.train import GateTrainConfig, fit_correctness_gates, gates_for_alpha, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss=loss, steps=50, crossfit=1,  # in-sample: exact optimum
                             alpha_units="raw")  # of the objective as written
    inputs = cache.gate_inputs(net.gate_config)
    predictors = fit_correctness_gates(net, cache, config, seed=0, inputs=inputs)
    losses = exit_losses(cache.logits, cache.labels, loss)
    for alpha in (0.0, 0.3, 1.0):
        gates = gates_for_alpha(net, predictors, cache, alpha, config, inputs=inputs)
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
    ref = gates_for_alpha(net, predictors, cache, 0.3, config, inputs=inputs)
    assert torch.equal(gate_probabilities(again, inputs), gate_probabilities(ref, inputs))


def test_envelope_gap_tolerance_counts_nearly_cheapest_points():
    a, b = [(0.2004, 0.8), (1.0, 0.9)], [(0.2, 0.8), (1.0, 0.9)]
    assert envelope_gap(a, b, 0.2, 1.0)["worst_gap"] == pytest.approx(-0.8)
    out = envelope_gap(a, b, 0.2, 1.0, tol=0.001)
    assert out["worst_gap"] == pytest.approx(0.0) and out["area"] == pytest.approx(0.0)


def test_crossfit_scores_are_out_of_fold(tiny_stages, tiny_input):
    """Each calibration sample is scored by a predictor that never saw it; train_gates uses them."""
    import torch

    from leenet.policies import gate_probabilities
    from leenet.train import GateTrainConfig, correctness_scores, fit_correctness_gates, gates_for_alpha, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=50, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    predictors = fit_correctness_gates(net, cache, config, seed=0, inputs=inputs)
    scores = correctness_scores(net, cache, config, seed=0, inputs=inputs)
    in_sample = torch.stack([g.logit(x) for g, x in zip(predictors, inputs)], dim=1).detach()
    assert scores.shape == in_sample.shape and not torch.allclose(scores, in_sample)
    assert correctness_scores(net, cache, GateTrainConfig(objective="predict", crossfit=1)) is None
    ref = gates_for_alpha(net, predictors, cache, 0.3, config, inputs=inputs, scores=scores)
    again = train_gates(net, cache, 0.3, config, seed=0)
    assert torch.equal(gate_probabilities(again, inputs), gate_probabilities(ref, inputs))


def test_gate_sweep_calibration_probabilities_are_out_of_fold(tiny_stages, tiny_input):
    """'soft' sweeps: each calibration sample's probabilities come from gates fit without its fold."""
    import torch

    import dataclasses

    from leenet.objective import exit_losses, range_scale, raw_alpha
    from leenet.policies import CachedOutputs, gate_probabilities
    from leenet.errors import LeenetError
    from leenet.train import GateTrainConfig, _fold_splits, fit_gate_sweep, train_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="soft", loss="error", steps=30, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    fits = fit_gate_sweep(net, cache, [0.2, 0.6], config, seed=3)
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
    in_sample = fit_gate_sweep(net, cache, [0.2], GateTrainConfig(steps=5, crossfit=1))
    assert in_sample[0.2].calib_probs is None
    one = CachedOutputs(cache.logits[:1], [p[:1] for p in cache.pooled], cache.labels[:1])
    for objective in ("soft", "predict"):  # one sample cannot be held out from itself
        with pytest.raises(LeenetError, match="at least 2 calibration samples"):
            fit_gate_sweep(net, one, [0.5], GateTrainConfig(objective=objective, steps=5, crossfit=2))


def test_gate_sweep_predict_moves_out_of_fold_scores_by_the_shipped_shift(tiny_stages, tiny_input):
    """'predict': held-out probabilities are the out-of-fold scores against the same thresholds."""
    import torch

    from leenet.train import GateTrainConfig, correctness_scores, fit_correctness_gates, fit_gate_sweep

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40, crossfit=2)
    inputs = cache.gate_inputs(net.gate_config)
    fits = fit_gate_sweep(net, cache, [0.0, 0.4], config, seed=1)
    assert fits[0.0].calib_probs.max() == 0  # alpha = 0: nobody leaves early
    predictors = fit_correctness_gates(net, cache, config, seed=1, inputs=inputs)
    oof = correctness_scores(net, cache, config, seed=1, inputs=inputs)
    in_sample = torch.stack([g.logit(x) for g, x in zip(predictors, inputs)], dim=1).detach()
    fit = fits[0.4]
    shipped_shift = in_sample - torch.stack([g.logit(x) for g, x in zip(fit.gates, inputs)], dim=1).detach()
    held_shift = oof - torch.logit(fit.calib_probs.double()).float()
    finite = fit.calib_probs.gt(1e-4) & fit.calib_probs.lt(1 - 1e-4)  # float32 sigmoid inverts well here
    torch.testing.assert_close(held_shift[finite], shipped_shift[finite], atol=5e-3, rtol=0)
    assert torch.allclose(shipped_shift, shipped_shift[:1].expand_as(shipped_shift), atol=1e-4)


def test_evaluator_calibration_accuracy_is_the_lower_of_own_and_held_out(tiny_stages, tiny_input):
    import torch

    from leenet.evaluate import Evaluator
    from leenet.train import GateTrainConfig, fit_gate_sweep

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    fit = fit_gate_sweep(net, cache, [0.3], GateTrainConfig(steps=20), seed=0)[0.3]
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


def _exhaustive_objective(scores, losses, costs, alpha, options):
    """Slow reference: the best calibration objective over every combination of per-gate options."""
    import itertools

    import torch

    from leenet.policies import first_exit
    from leenet.train import NEVER

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

    from leenet.policies import first_exit
    from leenet.cost import CostModel
    from leenet.train import NEVER, _objective_thresholds

    gen = torch.Generator().manual_seed(0)
    n = 400
    correct = torch.rand(n, 3, generator=gen) < torch.tensor([0.55, 0.6, 0.85])
    losses = torch.cat([(~correct).float(), torch.zeros(n, 1)], dim=1)  # the final exit is always right
    scores = torch.where(correct, 1.0, -1.0) + torch.randn(n, 3, generator=gen)
    # Exit 2 saves 0.05 over the final exit but its head and gate cost 0.24 for every sample reaching it.
    costs = CostModel(cost=torch.tensor([0.25, 0.45, 1.30, 1.35]), head_cost=torch.tensor([0.05, 0.05, 0.2]),
                       gate_cost=torch.tensor([0.01, 0.01, 0.04]), history=history)
    alpha = 0.4
    found = _objective_thresholds(scores, losses, costs, alpha, grid=9)
    exits = first_exit(scores >= found)
    value = float(((1 - alpha) * losses.gather(1, exits[:, None]).squeeze(1)
                   + alpha * costs.routed(found < NEVER)[exits]).mean())
    options = [[-NEVER, *torch.quantile(scores[:, i], torch.linspace(0, 1, 9)).tolist(), NEVER] for i in range(3)]
    assert value == pytest.approx(_exhaustive_objective(scores, losses, costs, alpha, options), abs=1e-6)
    assert found[2] >= NEVER and found[0] < NEVER


def test_soft_gates_that_do_not_pay_for_their_head_are_switched_off():
    import torch
    from torch import nn

    from leenet.heads import Gate
    from leenet.policies import first_exit
    from leenet.cost import CostModel
    from leenet.train import _switch_off_unpaid_exits

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

    from leenet.errors import LeenetError
    from leenet.policies import gate_probabilities
    from leenet.train import GateTrainConfig, _gate_logits, fit_correctness_gates, fit_gate_sweep

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    half = len(cache.labels) // 2
    train, calib = (type(cache)(cache.logits[s], [p[s] for p in cache.pooled], cache.labels[s])
                    for s in (slice(None, half), slice(half, None)))
    config = GateTrainConfig(objective="predict", loss="error", steps=40, predictors_on="train")
    fits = fit_gate_sweep(net, calib, [0.0, 0.4], config, seed=2, fit_on=train)
    predictors = fit_correctness_gates(net, train, config, seed=2)  # never saw a calibration sample
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
        fit_gate_sweep(net, calib, [0.4], config, seed=2)  # no training outputs given
    with pytest.raises(LeenetError, match="fit_on"):
        fit_gate_sweep(net, calib, [0.4], GateTrainConfig(objective="predict"), fit_on=train)


def test_minibatch_predictor_fitting_learns_what_full_batch_learns(tiny_stages, tiny_input):
    import torch

    from leenet.train import GateTrainConfig, _gate_logits, fit_correctness_gates

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    inputs = cache.gate_inputs(net.gate_config)
    aucs = {}
    for batch in (0, 16):
        config = GateTrainConfig(objective="predict", steps=200, batch_size=batch)
        predictors = fit_correctness_gates(net, cache, config, seed=0)
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

    from leenet import train as train_module
    from leenet.train import GateTrainConfig, _gate_logits, fit_correctness_gates

    monkeypatch.setattr(train_module, "TRAIN_SPLIT_BATCH", 16)
    net, cache = _tiny_cache(tiny_stages, tiny_input)
    inputs = cache.gate_inputs(net.gate_config)

    def scores(**kwargs):
        predictors = fit_correctness_gates(net, cache, GateTrainConfig(objective="predict", steps=30, **kwargs))
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
    from leenet.errors import LeenetError
    from leenet.train import GateTrainConfig

    with pytest.raises(LeenetError, match=match):
        GateTrainConfig(**kwargs)


def test_budget_gates_meet_the_budget_and_match_exhaustive_search(tiny_stages, tiny_input):
    """gates_for_budget: within the mean cost on calibration, as accurate as any threshold pair."""
    import itertools

    import torch

    from leenet.cost import CostModel
    from leenet.errors import LeenetError
    from leenet.objective import exit_losses
    from leenet.policies import first_exit, gate_probabilities
    from leenet.train import BUDGET_TIE, NEVER, GateTrainConfig, gates_for_alpha, gates_for_budget, predictor_scores

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40, crossfit=1)
    predictors, scores = predictor_scores(net, cache, config, seed=0)
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


def test_budget_sweep_solves_each_budget_from_the_alpha_sweep(tiny_stages, tiny_input):
    """budget_sweep: gates_for_budget at every budget, from a sweep's shared predictors and held-out scores."""
    import torch

    from leenet.errors import LeenetError
    from leenet.policies import first_exit, gate_probabilities
    from leenet.train import GateTrainConfig, budget_sweep, fit_gate_sweep, gates_for_budget

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40)  # 2 folds: held-out scores
    fit = fit_gate_sweep(net, cache, [0.0, 0.5], config, seed=0)[0.0]
    inputs = cache.gate_inputs(net.gate_config)
    sweep = budget_sweep(net, fit, cache, [0.1, 0.3, 0.6, 0.9], config)
    assert list(sweep) == [0.3, 0.6, 0.9]  # 0.1 is below the first exit's cost: left out
    for budget, solved in sweep.items():
        direct = gates_for_budget(net, fit.predictors, cache, fit.scores, budget, config)
        assert torch.equal(gate_probabilities(solved.gates, inputs), gate_probabilities(direct, inputs))
        # the held-out routing (what the thresholds were chosen on) meets the budget
        exits = first_exit(solved.calib_probs >= 0.5)
        assert float(net.routed_cost(solved.gates)[exits].mean()) <= budget + 1e-6
    with pytest.raises(LeenetError, match="budget"):
        budget_sweep(net, fit, cache, [0.5, float("nan")], config)
    soft = fit_gate_sweep(net, cache, [0.5], GateTrainConfig(steps=5), seed=0)[0.5]
    with pytest.raises(LeenetError, match="predict"):
        budget_sweep(net, soft, cache, [0.5])


def test_budget_curve_is_the_budget_sweep_on_a_grid_of_costs(tiny_stages, tiny_input):
    """Evaluator.budget_curve: a budget every ``step`` from the first exit's cost to 1, each measured like any gates."""
    from leenet.evaluate import Evaluator
    from leenet.train import GateTrainConfig, budget_sweep, fit_gate_sweep

    net, cache = _tiny_cache(tiny_stages, tiny_input)
    config = GateTrainConfig(objective="predict", loss="error", steps=40)
    fit = fit_gate_sweep(net, cache, [0.0], config, seed=0)[0.0]
    ev = Evaluator.of(net, cache, cache)
    curve = ev.budget_curve(net, fit, config, 0.1)
    first = float(net.cost[0])
    grid = [round(first + 0.1 * k, 6) for k in range(len(curve))]
    assert [c.param for c in curve] == grid and grid[-1] <= 1.0 < grid[-1] + 0.1
    assert {c.method for c in curve} == {"leenet_budget"}
    for candidate, (budget, solved) in zip(curve, budget_sweep(net, fit, cache, grid, config).items()):
        (direct,) = ev.leenet(budget, solved.gates, net.gate_config, calib_probs=solved.calib_probs)
        assert candidate.calib == direct.calib and candidate.test == direct.test
        assert candidate.test.cost <= budget + 1e-6  # test split = calibration split here


def test_versus_thresholds_compares_each_leenet_curve_with_the_merged_baselines():
    from leenet.compare import GAP_TOL, envelope_gap, versus_thresholds

    def entry(method, param, cost, accuracy):
        return {"method": method, "param": param, "cost": cost, "accuracy": accuracy}

    policies = [entry("leenet", 0.0, 1.0, 0.95), entry("leenet", 0.5, 0.5, 0.93), entry("leenet", 1.0, 0.2, 0.80),
                entry("max_softmax", 0.9, 0.6, 0.94), entry("entropy", 0.3, 0.3, 0.88),
                entry("single_exit", 0, 0.2, 0.80)]
    out = versus_thresholds(policies, lo=0.2)
    assert set(out) == {"leenet"}  # no budget curve in these results
    reference = envelope_gap([(1.0, 0.95), (0.5, 0.93), (0.2, 0.80)], [(0.6, 0.94), (0.3, 0.88)], 0.2, 1.0, GAP_TOL)
    assert out["leenet"]["area"] == pytest.approx(reference["area"])
    assert out["leenet"]["worst_gap"] == pytest.approx(-0.08)  # 0.80 against entropy's 0.88 from cost 0.3
    assert out["leenet"]["max_jump"] == pytest.approx(0.5)  # alpha 0 -> 0.5: cost 1.0 -> 0.5
    policies += [entry("leenet_budget", b, b, 0.80 + 0.15 * (b - 0.2) / 0.8) for b in (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)]
    assert versus_thresholds(policies, lo=0.2)["leenet_budget"]["max_jump"] == pytest.approx(0.2)
    assert versus_thresholds([p for p in policies if p["method"] != "max_softmax" and p["method"] != "entropy"],
                             lo=0.2) == {}
