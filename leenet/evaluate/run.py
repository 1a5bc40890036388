"""The results of a run from its cached outputs and gate fits: every policy on both splits, the
saved model's choice, the routed check, the wall-clock measurement and what the run was."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from leenet.config import RunConfig
from leenet.data import Splits
from leenet.evaluate.compare import versus_thresholds
from leenet.evaluate.evaluator import DECISION_THRESHOLDS, Evaluator
from leenet.evaluate.select import choose_saved, operating_points
from leenet.evaluate.timing import measure_wall_clock
from leenet.nn.cost import FLOPS_CONVENTION, CostModel
from leenet.nn.model import ExitNet
from leenet.policy.cache import CachedOutputs
from leenet.policy.fit import GateProblem
from leenet.policy.sweep import GateFit
from leenet.version import __version__

BUDGET_CURVE_STEP = 0.01  # "predict" runs also report a budget solved every this much of cost


def evaluate_run(net: ExitNet, caches: dict[str, CachedOutputs], bank: dict[float, GateFit], config: RunConfig,
                 test_loader, device: torch.device) -> tuple[dict, dict, tuple[Tensor, Tensor]]:
    """A run's evaluation: every policy, the saved model's alpha and threshold (set on ``net``)
    and its routed check on the test split; also each test sample's prediction and exit (N,)."""
    gate_cfg = config.train.gates
    results, chosen = evaluate_policies(net, caches["calib"], caches["test"], bank, config)
    # the gate settings this run resolved (config.json keeps None where a dataset default applied)
    results["gates"] = {"training": dataclasses.asdict(gate_cfg), "inputs": dataclasses.asdict(net.gate_config)}
    results["leenet_calibration_figures"] = (
        "held out (gates fit on the training split)" if "training" in caches
        else f"out-of-fold ({gate_cfg.crossfit} folds)" if gate_cfg.crossfit > 1 else "in-sample")
    net.gates.load_state_dict(bank[chosen["alpha"]].gates.state_dict())
    net.threshold = chosen["threshold"]
    results["routed_check"], routed = routed_check(net, test_loader, device, results["selected"])
    return results, chosen, routed


def evaluate_policies(net: ExitNet, calib: CachedOutputs, test: CachedOutputs, bank: dict[float, GateFit],
              config: RunConfig) -> tuple[dict, dict]:
    """All policies on both splits; the saved model's alpha and threshold chosen on calibration."""
    ev = Evaluator.of(net, calib, test)
    family, curve = [], []
    for alpha, fit in bank.items():
        candidates = ev.leenet(alpha, fit.gates, net.gate_config, DECISION_THRESHOLDS, fit.calib_probs)
        family += candidates
        curve += [c for c in candidates if c.threshold == net.threshold]
    first = next(iter(bank.values()))  # "predict" fits share their predictors: budgets solve from any
    budgets = ([] if first.predictors is None else ev.budget_curve(
        GateProblem.of(net), first, config.train.gates, BUDGET_CURVE_STEP, progress=config.progress))
    max_softmax, entropy = ev.confidence("max_softmax"), ev.confidence("entropy")
    singles, oracle = ev.single_exits(), ev.oracle()
    refs = {"calib_reference": singles[-1].calib.accuracy, "test_reference": singles[-1].test.accuracy}
    results = {
        "policies": [c.as_dict() for c in [*curve, *budgets, *max_softmax, *entropy, *singles, oracle]],
        # alpha -> the weight of cost in (1 - a)*loss + a*cost it stood for (GateTrainConfig.alpha_units)
        "raw_alphas": {repr(alpha): fit.raw_alpha for alpha, fit in bank.items()},
        "budget_margin": config.budget_margin,  # standard errors of slack every budget keeps on calibration
        "operating_points": operating_points(
            {"leenet": family, "max_softmax": max_softmax, "entropy": entropy}, *refs.values(),
            margin=config.budget_margin),
    }
    # test-split envelopes, from the first exit's cost: the α-curve and budget curve vs thresholds
    results["versus_thresholds"] = versus_thresholds(results["policies"], float(net.cost[0]))
    chosen, budget = choose_saved(family, curve, alpha=config.alpha, threshold=net.threshold,
                                  target_cost=config.target_cost, max_drop=config.max_drop,
                                  margin=config.budget_margin, **refs)
    if budget is not None:
        results["budget"] = budget
    pick = next(c for c in family if c.param == chosen["alpha"] and c.threshold == chosen["threshold"])
    results["selected"] = {**pick.as_dict(), "reason": chosen["reason"]}
    return results, chosen


@torch.no_grad()
def routed_check(net: ExitNet, loader, device: torch.device, selected: dict) -> tuple[dict, tuple[Tensor, Tensor]]:
    """Run the real routed forward on the test split and compare with the simulated policy; also
    each sample's prediction and exit (N,), in the split's order (the loader does not shuffle)."""
    net.eval()
    hits, counts, total, predictions, exits = 0, torch.zeros(net.num_exits), 0, [], []
    for x, y in loader:
        logits, exit_index = net(x.to(device))
        predictions.append(logits.argmax(-1).cpu())
        exits.append(exit_index.cpu())
        hits += int((predictions[-1] == y).sum())
        counts += torch.bincount(exits[-1], minlength=net.num_exits).float()
        total += len(y)
    accuracy, cost = hits / total, float((counts / total * net.routed_cost().cpu()).sum())
    # The simulation summed in float32: agree to well under one sample in a million.
    same = math.isclose(accuracy, selected["accuracy"], abs_tol=1e-6) and math.isclose(
        cost, selected["cost"], rel_tol=1e-5)
    check = {"accuracy": accuracy, "cost": cost, "exit_fractions": (counts / total).tolist(),
             "matches_simulation": same}
    return check, (torch.cat(predictions), torch.cat(exits))


def wall_clock(net: ExitNet, test_loader, device: torch.device, flops_cost: float) -> dict:
    """Routed network vs plain backbone on the first 256 test images; ``flops_cost``: the selected
    policy's mean test cost in FLOPs (its FLOPs speed-up is the limit a router can reach)."""
    images, seen = [], 0
    for x, _ in test_loader:
        images.append(x[: 256 - seen])
        seen += len(images[-1])
        if seen >= 256:
            break
    clock = measure_wall_clock(net, torch.cat(images).to(device))
    clock["flops_speedup"] = 1.0 / max(flops_cost, 1e-9)
    return clock


def describe_run(asked: RunConfig, arch: str, splits: Splits, net: ExitNet, test: CachedOutputs,
                 flops_costs: CostModel, plain_test: CachedOutputs) -> dict:
    """What the run was: dataset, backbone and exits (costs in the run's unit, FLOPs counted), settings.

    ``test``: the exits' test outputs as the network answers (ensembled, with an ensemble);
    ``plain_test``: the heads' own, whose final column is the backbone's (the same outputs
    without an ensemble).
    With an ensembled final exit the two differ: the backbone's accuracy is its own, the final
    exit's the ensemble's.
    """
    spec = splits.spec
    correct = test.correct.float().mean(0).tolist()
    backbone_accuracy = float(plain_test.correct[:, -1].float().mean())
    flops = float(net.backbone_flops)
    return {
        "leenet_version": __version__,
        "dataset": spec.name,
        "dataset_info": {"num_classes": spec.num_classes,
                         "image_shape": [spec.in_channels, spec.image_size, spec.image_size],
                         "num_train": len(splits.train), "num_calib": len(splits.calib), "num_test": len(splits.test)},
        "backbone": {"name": arch, "accuracy": backbone_accuracy, "flops": int(flops), "macs": int(flops // 2)},
        "flops_convention": FLOPS_CONVENTION,
        "exits": [{"name": name, "cost": c, "accuracy": acc, "flops": int(round(f * flops))}  # the net cut there
                  for name, c, f, acc in zip(net.exit_names, CostModel.of(net).single_exits().tolist(),
                                             flops_costs.single_exits().tolist(), correct)],
        "config": asked.to_dict(),
    }
