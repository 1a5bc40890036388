"""Shared by the report tests: a realistic fake results dict (a version-1 ``results.json``) and a PNG check."""

from __future__ import annotations

import math
from pathlib import Path

from leenet.report import Results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIT_NAMES = ["block1", "block2", "block3", "final"]
EXIT_COSTS = [0.22, 0.48, 0.74, 1.004]
EXIT_ACCS = [0.712, 0.884, 0.951, 0.975]


def _curve_point(method: str, param: float | None, cost: float, with_std: bool) -> dict:
    """A plausible policy entry: accuracy saturates with cost, mass moves to later exits."""
    accuracy = 0.975 - 0.27 * math.exp(-7.5 * (cost - 0.22)) + (0.004 if method == "leenet" else 0.0)
    late = min(max((cost - 0.22) / 0.784, 0.0), 1.0)
    weights = [(1 - late) ** 2, 2 * late * (1 - late) * 0.6, 2 * late * (1 - late) * 0.4, late**2]
    point = {"method": method, "param": param, "accuracy": min(accuracy, 0.978), "cost": cost,
             "exit_fractions": [w / sum(weights) for w in weights]}
    if with_std:
        point.update(accuracy_std=0.003 + 0.002 * (1 - late), cost_std=0.01)
    return point


def make_results(*, optional: bool = True, with_std: bool = False, n_alphas: int = 11) -> dict:
    """A realistic fake ``results.json`` dict: 4 exits, an alpha sweep, two threshold sweeps, oracle."""
    alphas = [round(i / (n_alphas - 1), 3) for i in range(n_alphas)]
    policies = [_curve_point("leenet", a, 1.004 - 0.76 * a**0.7, with_std) for a in alphas]
    policies += [_curve_point("max_softmax", round(0.5 + 0.05 * i, 2), 0.22 + 0.0784 * i, False) for i in range(11)]
    policies += [_curve_point("entropy", round(0.05 * i, 2), 0.25 + 0.075 * i, False) for i in range(11)]
    policies += [{"method": "single_exit", "param": i, "accuracy": a, "cost": c,
                  "exit_fractions": [float(j == i) for j in range(4)]}
                 for i, (a, c) in enumerate(zip(EXIT_ACCS, EXIT_COSTS))]
    policies.append({"method": "oracle", "param": None, "accuracy": 0.991, "cost": 0.31,
                     "exit_fractions": [0.71, 0.17, 0.07, 0.05]})
    results = {
        "leenet_version": "0.1.0",
        "dataset": "digits",
        "backbone": {"name": "digits_cnn", "accuracy": 0.975, "flops": 1_234_567, "macs": 617_283},
        "exits": [{"name": n, "cost": c, "accuracy": a, "flops": int(c * 1_234_567)}
                  for n, c, a in zip(EXIT_NAMES, EXIT_COSTS, EXIT_ACCS)],
        "policies": policies,
        "timings": {"backbone": 12.3, "heads": 4.5, "gates": 1.2, "evaluate": 2.0},
    }
    if optional:
        policies += [_curve_point("leenet_budget", round(0.22 + 0.02 * i, 2), 0.22 + 0.02 * i - 0.005, False)
                     for i in range(40)]  # budgets solved directly ("predict" runs)
        selected = next(p for p in policies if p["method"] == "leenet" and p["param"] == alphas[3])
        results.update(
            dataset_info={"num_classes": 10, "image_shape": [1, 8, 8], "num_train": 1150, "num_calib": 287,
                          "num_test": 360},
            flops_convention="flops = 2 x multiply-adds",
            selected={**selected, "reason": f"alpha={alphas[3]} (from --alpha)"},
            budget={"kind": "max_drop", "target": 0.005, "alpha": 0.35, "threshold": 0.5,
                    "calib": {"accuracy": 0.972, "cost": 0.52}, "test": {"accuracy": 0.971, "cost": 0.53},
                    "met_on_test": True, "reachable": True, "message": "alpha=0.35: budget held on test"},
            operating_points=[{"name": "accuracy at <= 50% FLOPs", "method": "leenet", "param": 0.4,
                               "accuracy": 0.9655, "cost": 0.47, "met_on_test": True},
                              {"name": "accuracy at <= 25% FLOPs", "method": "leenet", "reachable": False}],
            budget_margin=1.5,
            versus_thresholds={"leenet": {"area": -0.0014, "worst_gap": -0.0306, "worst_cost": 0.29, "max_jump": 0.379},
                               "leenet_budget": {"area": 0.0006, "worst_gap": -0.0032, "worst_cost": 0.312,
                                                 "max_jump": 0.013}},
            wall_clock={"device": "cpu", "throughput_batch": 256, "backbone_throughput": 12345.0,
                        "leenet_throughput": 20000.0, "backbone_latency_ms": 1.2, "leenet_latency_ms": 0.9,
                        "flops_speedup": 1.8, "measured_speedup": 1.62},
            config={"model": {"backbone": "digits_cnn", "exits": ["block1", "block2"]}, "seed": 0},
        )
    return results


def make(**kwargs) -> Results:
    """``make_results(**kwargs)`` read as the schema."""
    return Results.from_dict(make_results(**kwargs))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000


def digits_outputs(n: int = 360, seed: int = 0) -> dict:
    """Plausible outputs of a digits run on real 8x8 digits (uint8, values 0..16): where each image left
    (by the fixture's selected exit fractions), the routed prediction (5 % wrong) and the final exit's (3 %)."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch, rng = load_digits(), np.random.default_rng(seed)
    images = np.asarray(bunch.images[:n], dtype=np.uint8)[:, None]
    labels = np.asarray(bunch.target[:n], dtype=np.int64)
    fractions = make_results()["selected"]["exit_fractions"]
    exit_index = rng.choice(len(fractions), size=n, p=np.array(fractions) / sum(fractions))

    def noisy(rate: float) -> np.ndarray:
        return np.where(rng.random(n) < rate, (labels + rng.integers(1, 10, n)) % 10, labels)

    return {"images": images, "labels": labels, "predictions": noisy(0.05), "exit_index": exit_index,
            "final_predictions": noisy(0.03), "exit_names": EXIT_NAMES,
            "class_names": [str(c) for c in bunch.target_names], "value_max": 16.0}


def make_gallery_run(run_dir: Path, **kwargs) -> dict:
    """A version-1 results dict with a gallery section, and its ``gallery.npz`` written into ``run_dir``."""
    import dataclasses

    from leenet.report import gallery_from_outputs, write_gallery_file

    section, thumbs = gallery_from_outputs(**digits_outputs(), **kwargs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_gallery_file(run_dir, thumbs)
    return {**make_results(), "gallery": dataclasses.asdict(section)}
