"""LEENet vs confidence thresholds on Fashion-MNIST, over several seeds of head and gate training.

``python benchmarks/fashion_mnist.py`` (from the repository root) reuses the backbone in
``runs/fmnist_backbone_w24.pt`` (or trains it, see :mod:`fmnist_backbone`), caches the pooled
features at every exit once, then for each seed trains the exit heads (pooled-linear on the
cached features, or with ``--head sdn`` SDN-style conv heads through the frozen stages) and
gates for a 21-alpha sweep with every gate method of :data:`METHODS`. The method whose
sweep beats the threshold baselines by most *on the calibration split* becomes the reported
"leenet"; every number in ``results.json`` is measured on the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_backbone import CALIB_SIZE, DEFAULTS, train_backbone  # noqa: E402

from leenet.backbones import SmallResNet
from leenet.config import (
    BUDGET_MARGIN,
    GateConfig,  # noqa: E402
    GateTrainConfig,
)
from leenet.data import load_dataset, make_loader  # noqa: E402
from leenet.evaluate import (
    DECISION_THRESHOLDS,
    GAP_TOL,
    Candidate,
    Evaluator,
    cheapest_within_drop,
    envelope_gap,
    find_budget,
    max_neighbour_jump,
    operating_points,
)
from leenet.nn import attach_exits, make_gates, split_backbone
from leenet.policy import (
    CachedOutputs,
    GateProblem,
    collect_outputs,
    confidence_scores,
    fit_gate_sweep,
    summarize,
    threshold_exits,
    threshold_grid,
)
from leenet.report import write_report  # noqa: E402
from leenet.train import freeze_, train_heads

EXITS = ("layer1.0", "layer1", "layer2", "layer3.0")
ALPHAS = tuple(round(0.05 * k, 2) for k in range(21))
# these also solve a budget every BUDGET_STEP of cost (budget_sweep): a dense "budget curve"
BUDGET_CURVE_METHODS = ("predict-error", "predict-error train classes")
# 0.001: where the accuracy/cost curve is steep (near the first exit, ~0.7 pt per 0.01 of cost)
# a coarser staircase loses tenths of a point to the baseline's between its own steps
BUDGET_STEP = 0.001
# minibatches of leenet.train.TRAIN_SPLIT_BATCH (2048), the default on the training split
TRAIN_FIT = GateTrainConfig(objective="predict", loss="error", predictors_on="train", steps=1000)
# run on every seed; the rest on --lever-seeds. Alphas are in range units unless "raw units" says otherwise.
MAIN_METHODS = ("soft-ce", "predict-error", "predict-error pooled", "predict-error raw units",
                "predict-error train classes")
METHODS: dict[str, tuple[GateConfig, GateTrainConfig]] = {
    "soft-ce": (GateConfig(), GateTrainConfig(objective="soft", loss="ce")),
    "soft-error": (GateConfig(), GateTrainConfig(loss="error")),
    "predict-error": (GateConfig(), GateTrainConfig(objective="predict", loss="error")),
    "predict-error no history": (GateConfig(history=False), GateTrainConfig(objective="predict", loss="error")),
    "predict-error pooled": (GateConfig(pooled=True), GateTrainConfig(objective="predict", loss="error")),
    "predict-soft_error pooled": (GateConfig(pooled=True), GateTrainConfig(objective="predict", loss="soft_error")),
    "predict-error pooled in-sample": (GateConfig(pooled=True),
                                       GateTrainConfig(objective="predict", loss="error", crossfit=1)),
    "soft-ce in-sample": (GateConfig(), GateTrainConfig(objective="soft", loss="ce", crossfit=1)),
    "predict-ce": (GateConfig(), GateTrainConfig(objective="predict", loss="ce")),
    "predict-error raw units": (GateConfig(), GateTrainConfig(objective="predict", loss="error", alpha_units="raw")),
    "predict-error pooled raw units": (GateConfig(pooled=True),
                                       GateTrainConfig(objective="predict", loss="error", alpha_units="raw")),
    "soft-ce raw units": (GateConfig(), GateTrainConfig(objective="soft", loss="ce", alpha_units="raw")),
    # correctness predictors fit on the 50k training images (held-out scores on calibration)
    "predict-error train classes": (GateConfig(hidden=32, classes=True), TRAIN_FIT),
    "predict-error train": (GateConfig(hidden=32), TRAIN_FIT),
    "predict-error classes": (GateConfig(classes=True), GateTrainConfig(objective="predict", loss="error")),
}


@torch.no_grad()
def pooled_features(stages, ds, batch_size: int = 500) -> tuple[list[Tensor], Tensor, Tensor]:
    """One pass of the frozen stages: pooled features at each early exit, final logits, labels."""
    pooled, final, labels = [], [], []
    for x, y in make_loader(ds, batch_size, train=False):
        h, row = x, []
        for stage in stages[:-1]:
            h = stage(h)
            row.append(h.flatten(2).mean(-1))
        final.append(stages[-1](h))
        pooled.append(row)
        labels.append(y)
    return [torch.cat([r[i] for r in pooled]) for i in range(len(stages) - 1)], torch.cat(final), torch.cat(labels)


def train_pooled_heads(net, pooled: list[Tensor], labels: Tensor, seed: int, epochs: int) -> None:
    """Train each pooled-linear head's ``fc`` on cached pooled training features (AdamW, cosine)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for head in net.heads for p in head.parameters()]
    steps = epochs * (len(labels) // 256)
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(256)[: len(labels) // 256]:
            loss = sum(F.cross_entropy(head.fc(p[idx]), labels[idx]) for head, p in zip(net.heads, pooled))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.heads.eval()


@torch.no_grad()
def cached_outputs(net, split: tuple[list[Tensor], Tensor, Tensor]) -> CachedOutputs:
    """Per-exit logits from cached pooled features (exactly what ``forward_all`` computes)."""
    pooled, final, labels = split
    logits = [head.fc(p) for head, p in zip(net.heads, pooled)] + [final]
    return CachedOutputs(torch.stack(logits, 1), pooled, labels)


def confidence_family(ev: Evaluator, kind: str, grid: list[float]) -> list[Candidate]:
    """A threshold baseline on a fixed grid (shared by all seeds so they can be averaged)."""
    out = []
    for t in grid:
        res = [summarize(threshold_exits(confidence_scores(c.logits, kind), t), c.correct, ev.cost)
               for c in (ev.calib, ev.test)]
        out.append(Candidate(kind, t, *res))
    return out


def points(cands: list[Candidate], split: str = "test") -> list[tuple[float, float]]:
    """(cost, accuracy) pairs of candidates on one split."""
    return [(getattr(c, split).cost, getattr(c, split).accuracy) for c in cands]


def test_gap(cands: list[Candidate], baseline: list[Candidate], lo: float) -> dict:
    """:func:`envelope_gap` on the test split, with the paired standard errors of the gap."""
    outcomes = [np.stack([c.test.outcomes.numpy() for c in group]) for group in (cands, baseline)]
    return envelope_gap(points(cands), points(baseline), lo, 1.0, GAP_TOL, outcomes=outcomes)


def method_metrics(curve: list[Candidate], family: list[Candidate], baseline: list[Candidate],
                   singles: list[Candidate], lo: float) -> dict:
    """Targets (a)-(c) and budget mode for one gate method on one seed."""
    ref_c, ref_t = singles[-1].calib.accuracy, singles[-1].test.accuracy
    gap = test_gap(curve, baseline, lo)
    calib_gap = envelope_gap(points(curve, "calib"), points(baseline, "calib"), lo, 1.0, GAP_TOL)
    drop = cheapest_within_drop(family, ref_c, 0.005)
    alpha0 = next(c for c in curve if c.param == 0.0)
    budgets = {f"target_cost={c}": find_budget(family, target_cost=c, calib_reference=ref_c, test_reference=ref_t)
               for c in (0.35, 0.5)}
    budgets.update({f"max_drop={d}": find_budget(family, max_drop=d, calib_reference=ref_c, test_reference=ref_t)
                    for d in (0.005, 0.01)})
    return {
        "gap": gap, "calib_area": calib_gap["area"],
        "family_gap": test_gap(family, baseline, lo),
        "drop_point": None if drop is None else {"alpha": drop.param, "threshold": drop.threshold,
                                                 "calib": drop.calib.as_dict(), "test": drop.test.as_dict()},
        "cost_at_0.5pt": None if drop is None else drop.test.cost,
        "drop_at_0.5pt": None if drop is None else ref_t - drop.test.accuracy,
        "max_jump": max_neighbour_jump([c.test.cost for c in sorted(curve, key=lambda c: c.param)]),
        "alpha0_drop": ref_t - alpha0.test.accuracy,
        "budgets": budgets,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def average_policies(per_seed: list[list[Candidate]]) -> list[dict]:
    """Candidates aligned across seeds (same method, param, threshold) → mean ± std entries."""
    out = []
    for group in zip(*per_seed):
        entry = group[0].as_dict()
        entry.pop("calib")
        for key in ("accuracy", "cost"):
            entry[key], entry[f"{key}_std"] = mean_std([getattr(c.test, key) for c in group])
        entry["exit_fractions"] = np.mean([c.test.exit_fractions for c in group], 0).tolist()
        out.append(entry)
    return out


def summarize_metrics(runs: list[dict]) -> dict:
    """Mean ± std over seeds of the scalar target metrics."""
    keys = {"area": lambda m: m["gap"]["area"], "area_below": lambda m: m["gap"]["area_below"],
            "worst_gap": lambda m: m["gap"]["worst_gap"], "worst_cost": lambda m: m["gap"]["worst_cost"],
            "calib_area": lambda m: m["calib_area"], "family_area": lambda m: m["family_gap"]["area"],
            "family_worst_gap": lambda m: m["family_gap"]["worst_gap"], "cost_at_0.5pt": lambda m: m["cost_at_0.5pt"],
            "drop_at_0.5pt": lambda m: m["drop_at_0.5pt"], "max_jump": lambda m: m["max_jump"],
            "alpha0_drop": lambda m: m["alpha0_drop"],
            "budget_area": lambda m: m.get("budget_gap", {}).get("area"),
            "budget_worst_gap": lambda m: m.get("budget_gap", {}).get("worst_gap"),
            "budget_worst_cost": lambda m: m.get("budget_gap", {}).get("worst_cost")}
    for prefix, gap in (("", "gap"), ("family_", "family_gap"), ("budget_", "budget_gap")):  # paired errors
        for key in ("worst_stderr", "min_z", "min_z_cost", "min_z_gap"):
            keys[prefix + key] = lambda m, gap=gap, key=key: m.get(gap, {}).get(key)
    out = {}
    for name, get in keys.items():
        vals = [get(m) for m in runs]
        out[name] = None if any(v is None for v in vals) else dict(zip(("mean", "std"), mean_std(vals)))
    out["wins_everywhere_seeds"] = sum(m["gap"]["wins_everywhere"] for m in runs)
    return out


def cached_backbone_stages(path: Path) -> tuple[object, list]:
    """The Fashion-MNIST splits and the frozen stages of the cached backbone at ``path``
    (trained and cached first if missing), cut at :data:`EXITS`: what the side studies reuse."""
    splits = load_dataset("fashion-mnist", calib_size=CALIB_SIZE, seed=0)
    backbone, _ = load_or_train_backbone(path, splits, reuse=True)
    return splits, split_backbone(freeze_(backbone), list(EXITS))


def _exits_tag(exits) -> str:
    """Cache file names carry the exits when they are not the default :data:`EXITS`."""
    return "" if tuple(exits) == EXITS else "_" + "-".join(exits)


def feature_cache_path(backbone: Path, exits=EXITS) -> Path:
    """Where the pooled features of the backbone at ``backbone`` are cached."""
    return backbone.with_name(f"{backbone.stem}{_exits_tag(exits)}_features.pt")


def head_cache_path(backbone: Path, seed: int, head: str = "sdn", epochs: int = 6, exits=EXITS) -> Path:
    """Where one seed's trained conv heads and their outputs are cached (see :func:`trained_exits`)."""
    return backbone.with_name(f"{backbone.stem}{_exits_tag(exits)}_{head}_e{epochs}_seed{seed}_heads.pt")


def load_or_train_backbone(path: Path, splits, reuse: bool) -> tuple[torch.nn.Module, dict]:
    """The cached backbone when asked and present, else a freshly trained one (then cached)."""
    log_path = path.with_suffix(".json")
    if reuse and path.exists():
        log = json.loads(log_path.read_text()) if log_path.exists() else dict(DEFAULTS)
        model = SmallResNet(10, 1, width=log["width"], blocks=log["blocks"])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, {**log, "reused": True}
    model, log = train_backbone(splits, **DEFAULTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    log_path.write_text(json.dumps(log, indent=2))
    return model, {**log, "reused": False}


def trained_exits(stages, exits: list[str], feats: dict | None, splits, seed: int, head: str, head_epochs: int,
                  cache: Path | None = None, *, distill: float = 0.0, temperature: float = 3.0,
                  cascade: str = "off"):
    """An ExitNet with trained heads and its cached calibration, test and training outputs.

    Pooled-linear heads train on the cached pooled features (seconds); other heads as
    :func:`trained_conv_exits` (through the frozen stages, cached in ``cache``).
    """
    if head == "pool":
        torch.manual_seed(seed)
        net = attach_exits(stages, exits, input_shape=(1, 28, 28), num_classes=10, head=head, cascade=cascade)
        train_pooled_heads(net, feats["train"][0], feats["train"][2], seed, epochs=head_epochs)
        return net, *(cached_outputs(net, feats[k]) for k in ("calib", "test", "train"))
    net, saved = trained_conv_exits(stages, exits, splits, seed, head, head_epochs, cache, distill=distill,
                                    temperature=temperature, cascade=cascade)
    return net, saved["calib"], saved["test"], saved["train"]


def trained_conv_exits(stages, exits: list[str], splits, seed: int, head: str, head_epochs: int,
                       cache: Path | None = None, *, distill: float = 0.0, temperature: float = 3.0,
                       cascade: str = "off") -> tuple[object, dict]:
    """An ExitNet with trained conv heads, and its outputs: ``{"calib", "test", "train"}`` caches
    and, when this or an earlier call trained them, ``"seconds"`` and ``"threads"``.

    The heads train through the frozen stages with :func:`leenet.train.train_heads`, as
    ``leenet run`` does, with ``distill``/``temperature`` and ``cascade`` as there. With
    ``cache``, the heads (and cascade links) and their outputs are saved there, with the
    training seconds, and reused when the file exists (head training is most of an SDN run's time).
    """
    torch.manual_seed(seed)
    net = attach_exits(stages, exits, input_shape=(1, 28, 28), num_classes=10, head=head, cascade=cascade)
    saved = torch.load(cache, weights_only=False) if cache is not None and cache.exists() else {}
    if "exit_state" in saved:  # heads and cascade links
        net.load_state_dict(saved["exit_state"], strict=False)
    elif saved:  # written before cascades: the heads alone
        net.heads.load_state_dict(saved["heads"])
    else:
        train = make_loader(splits.train, 128, train=True, seed=seed)
        start = time.perf_counter()
        train_heads(net, lambda: iter(train), steps_per_epoch=len(train), epochs=head_epochs, progress=False,
                    distill=distill, temperature=temperature)
        saved["seconds"], saved["threads"] = time.perf_counter() - start, torch.get_num_threads()
    net.eval()
    missing = [split for split in ("calib", "test", "train") if split not in saved]  # train: for train-fit gates
    for split in missing:
        saved[split] = collect_outputs(net, make_loader(getattr(splits, split), 500, train=False), progress=False)
    if cache is not None and missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("stages.")}
        saved.update(heads=net.heads.state_dict(), exit_state=state)
        torch.save(saved, cache)
    return net, saved


def run_seed(net, calib: CachedOutputs, test: CachedOutputs, train: CachedOutputs, seed: int, methods: dict,
             grids: dict | None, *, alphas: tuple[float, ...] = ALPHAS,
             budget_curve_methods: tuple[str, ...] = BUDGET_CURVE_METHODS, budget_step: float = BUDGET_STEP) -> dict:
    """Every gate method for one seed's heads, swept over ``alphas``; returns candidates and metrics.

    ``budget_curve_methods`` also solve a budget every ``budget_step`` of cost (minutes each).
    Each method's fits (alpha → :class:`leenet.policy.sweep.GateFit`) are kept under "fits".
    """
    ev = Evaluator.of(net, calib, test)
    grids = grids or {k: threshold_grid(confidence_scores(calib.logits, k)) for k in ("max_softmax", "entropy")}
    baselines = {k: confidence_family(ev, k, g) for k, g in grids.items()}
    singles, oracle = ev.single_exits(), ev.oracle()
    both = baselines["max_softmax"] + baselines["entropy"]
    out = {"grids": grids, "baselines": baselines, "singles": singles, "oracle": oracle,
           "cost": net.cost.tolist(), "exit_names": net.exit_names, "methods": {}}
    for name, (gate_config, train_config) in methods.items():
        start = time.perf_counter()
        net.gate_config = gate_config
        net.gates = make_gates(net.num_exits - 1, [p.shape[1] for p in calib.pooled], gate_config,
                               calib.logits.shape[-1])
        fit_on = train if train_config.predictors_on == "train" else None
        family = []
        problem = GateProblem.of(net)
        fits = fit_gate_sweep(problem, calib, alphas, train_config, seed=seed, fit_on=fit_on)
        for alpha, fit in fits.items():
            family += ev.leenet(alpha, fit.gates, gate_config, DECISION_THRESHOLDS, fit.calib_probs)
        curve = [c for c in family if c.threshold == 0.5]
        metrics = method_metrics(curve, family, both, singles, float(net.cost[0]))
        if name in budget_curve_methods:
            budget_curve = ev.budget_curve(problem, fits[alphas[0]], train_config, budget_step)
            metrics["budget_gap"] = test_gap(budget_curve, both, float(net.cost[0]))
        metrics["seconds"] = time.perf_counter() - start
        out["methods"][name] = {"curve": curve, "family": family, "metrics": metrics, "fits": fits}
        print(f"seed {seed} {name}: area {metrics['gap']['area']:+.5f} worst {metrics['gap']['worst_gap']:+.4f}"
              f"@{metrics['gap']['worst_cost']:.2f} calib-area {metrics['calib_area']:+.5f} "
              f"cost@0.5pt {metrics['cost_at_0.5pt']} jump {metrics['max_jump']:.3f} "
              f"a0-drop {metrics['alpha0_drop']:+.4f}"
              + (f" budget-curve area {metrics['budget_gap']['area']:+.5f} worst {metrics['budget_gap']['worst_gap']:+.4f}"
                 + f" (SE {metrics['budget_gap']['worst_stderr']:.4f}, min z {metrics['budget_gap']['min_z']:+.2f})"
                 if "budget_gap" in metrics else "") + f" ({metrics['seconds']:.1f}s)", flush=True)
    return out


def build_results(runs: list[dict], backbone_log: dict, net_info: dict, timings: dict, args) -> dict:
    """results.json in the pipeline's schema, plus targets, levers and budget sections."""
    names = [n for n in runs[0]["methods"] if all(n in r["methods"] for r in runs)]
    calib_area = {n: np.mean([r["methods"][n]["metrics"]["calib_area"] for r in runs]) for n in names}
    chosen = max(names, key=lambda n: calib_area[n])  # chosen on calibration, over the seeds all methods ran
    curves = [r["methods"][chosen]["curve"] for r in runs]
    policies = average_policies(curves)
    for kind in ("max_softmax", "entropy"):
        policies += average_policies([r["baselines"][kind] for r in runs])
    policies += average_policies([r["singles"] for r in runs]) + average_policies([[r["oracle"]] for r in runs])
    singles = [r["singles"] for r in runs]
    exits = []
    for i, name in enumerate(runs[0]["exit_names"]):
        acc = mean_std([s[i].test.accuracy for s in singles])
        cost = singles[0][i].test.cost  # the network cut at exit i: its stages and its own head
        exits.append({"name": name, "cost": cost, "accuracy": acc[0], "accuracy_std": acc[1],
                      "flops": int(round(cost * net_info["flops"]))})
    ops = []
    for r in runs:
        fam = {"leenet": r["methods"][chosen]["family"], **r["baselines"]}
        ops.append(operating_points(fam, r["singles"][-1].calib.accuracy, r["singles"][-1].test.accuracy))
    op_mean = []
    for group in zip(*ops):
        p = dict(group[0])
        p.pop("calib", None)
        if all(q["reachable"] for q in group):
            for key in ("accuracy", "cost"):
                p[key], p[f"{key}_std"] = mean_std([q[key] for q in group])
            p["met_on_test_seeds"] = sum(q["met_on_test"] for q in group)
        op_mean.append(p)
    levers = {}
    for n in runs[0]["methods"]:
        ms = [r["methods"][n]["metrics"] for r in runs if n in r["methods"]]
        levers[n] = {**summarize_metrics(ms), "seeds": len(ms),
                     "seconds_per_sweep": float(np.mean([m["seconds"] for m in ms]))}
    budgets = {k: [r["methods"][chosen]["metrics"]["budgets"][k] for r in runs]
               for k in runs[0]["methods"][chosen]["metrics"]["budgets"]}
    drop = runs[0]["methods"][chosen]["metrics"]["drop_point"]
    sel = None if drop is None else {"method": "leenet", "param": drop["alpha"], "threshold": drop["threshold"],
                                     **drop["test"], "calib": drop["calib"]}
    return {
        "dataset": "fashion-mnist",
        "dataset_info": net_info["dataset_info"],
        "backbone": {"name": f"small_resnet(width={backbone_log['width']}, blocks={backbone_log['blocks']})",
                     "accuracy": backbone_log["test_accuracy"], "flops": int(net_info["flops"]),
                     "macs": int(net_info["flops"] // 2), "training": backbone_log},
        "heads": {"kind": args.head, "epochs": args.head_epochs},
        "exits": exits, "policies": policies, "operating_points": op_mean,
        **({"selected": {**sel, "reason": "cheapest (alpha, threshold) within 0.5 pt on calibration (seed 0)"}}
           if sel else {}),
        "gate_method": chosen, "seeds": args.seeds, "alphas": list(ALPHAS), "budget_step": BUDGET_STEP,
        "budget_margin": BUDGET_MARGIN,
        "targets": levers[chosen], "levers": levers, "budget_mode": budgets,
        "timings": timings,
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--no-reuse", dest="reuse", action="store_false", help="retrain the backbone (and the conv heads)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(MAIN_METHODS), help="gate methods on every seed")
    parser.add_argument("--levers", nargs="*", default=[m for m in METHODS if m not in MAIN_METHODS],
                        help="further gate methods, on --lever-seeds only")
    parser.add_argument("--lever-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--head", choices=("pool", "sdn"), default="pool",
                        help="exit heads: pool (trained on cached pooled features) or sdn (conv heads)")
    parser.add_argument("--head-epochs", type=int, default=None, help="default: 15 for pool, 6 for sdn")
    parser.add_argument("--exits", type=lambda text: text.split(","), default=list(EXITS),
                        help="comma-separated exit points (default: " + ",".join(EXITS) + ")")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/fashion_mnist (pool) or fashion_mnist_sdn")
    args = parser.parse_args()
    args.head_epochs = args.head_epochs or (15 if args.head == "pool" else 6)
    args.out = args.out or Path("benchmarks/results/fashion_mnist" + ("" if args.head == "pool" else "_sdn"))
    wall, timings = time.perf_counter(), {}
    splits = load_dataset("fashion-mnist", calib_size=CALIB_SIZE, seed=0)
    t = time.perf_counter()
    backbone, log = load_or_train_backbone(args.backbone, splits, args.reuse)
    timings["backbone"] = time.perf_counter() - t if not log["reused"] else log["train_seconds"]
    freeze_(backbone)
    stages = split_backbone(backbone, args.exits)
    t = time.perf_counter()
    feats = None  # pooled features: only pooled-linear heads train on them
    if args.head == "pool":
        feature_path = feature_cache_path(args.backbone, args.exits)
        if args.reuse and log["reused"] and feature_path.exists():
            feats = torch.load(feature_path, weights_only=False)
        else:
            feats = {k: pooled_features(stages, getattr(splits, k)) for k in ("train", "calib", "test")}
            torch.save(feats, feature_path)
    timings["feature_cache"] = time.perf_counter() - t
    t = time.perf_counter()
    runs, grids = [], None
    for seed in args.seeds:
        names = args.methods + (args.levers if seed in args.lever_seeds else [])
        head_cache = None
        if args.head != "pool" and args.reuse and log["reused"]:
            head_cache = head_cache_path(args.backbone, seed, args.head, args.head_epochs, args.exits)
        net, calib, test, train = trained_exits(stages, args.exits, feats, splits, seed, args.head,
                                                args.head_epochs, head_cache)
        runs.append(run_seed(net, calib, test, train, seed, {n: METHODS[n] for n in names}, grids))
        grids = runs[0]["grids"]
    timings["heads_gates_eval"] = time.perf_counter() - t
    net = attach_exits(stages, args.exits, input_shape=(1, 28, 28), num_classes=10, head=args.head)
    info = {"flops": float(net.backbone_flops),
            "dataset_info": {"num_classes": 10, "image_shape": [1, 28, 28], "num_train": len(splits.train),
                             "num_calib": len(splits.calib), "num_test": len(splits.test)}}
    timings["total_wall"] = time.perf_counter() - wall
    results = build_results(runs, log, info, timings, args)
    results["machine"] = {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                          "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "command": "python " + " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_report(results, args.out)
    print(json.dumps({"gate_method": results["gate_method"], "targets": results["targets"]}, indent=1))


if __name__ == "__main__":
    main()
