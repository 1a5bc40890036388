"""`leenet run` as a library call: data → backbone → exits → heads → gates → evaluation → artifacts."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

from leenet import __version__
from leenet.build import attach_exits
from leenet.checkpoint import save_checkpoint
from leenet.config import RunConfig
from leenet.compare import versus_thresholds
from leenet.cost import FLOPS_CONVENTION, CostModel
from leenet.errors import DataError, LeenetError, brief
from leenet.evaluate import DECISION_THRESHOLDS, Evaluator, find_budget, operating_points
from leenet.heads import GateConfig
from leenet.model import ExitNet
from leenet.policies import CachedOutputs
from leenet.split import split_backbone
from leenet.train import (GateTrainConfig, collect_outputs, fit_gate_sweep, freeze_,
                          resolve_precision, train_classifier, train_heads)

# Per dataset: the backbone used when --arch is not given, how long things train, and the
# exit heads and gates, chosen by measurement (benchmarks/objective_forms.py on digits,
# benchmarks/fashion_mnist.py; docs/benchmark.md): with digits' 287 calibration images the
# hard-target gates on confidence features win; with 10k calibration images gates that
# predict their exit's correctness win, helped by pooled features behind weak pooled-linear
# heads but not behind SDN heads, which lift every curve on Fashion-MNIST.
_SMALL_CALIB = {"gate": GateConfig(), "gate_train": GateTrainConfig(objective="hard", loss="ce")}
_LARGE_CALIB = {"gate": GateConfig(pooled=True), "gate_train": GateTrainConfig(objective="predict", loss="error")}
DATASET_DEFAULTS = {
    # 8x8 digit maps lose their shape when pooled: flatten heads see it (94% at 2% FLOPs vs 10%).
    "digits": {"arch": "digits_cnn", "epochs": 40, "lr": 0.05, "precision": "fp32", "head_epochs": 30,
               "head": "flatten", **_SMALL_CALIB},
    # The benchmark's recipe: 94.2% test in 27 min on 2 CPU cores with bf16 (benchmarks/fmnist_backbone.py).
    # Its gates predict correctness from class probabilities too, learned on the 50k training
    # images (the early exits do not overfit them): chosen on calibration by the benchmark.
    "fashion-mnist": {"arch": "small_resnet", "epochs": 24, "lr": 0.1, "precision": "auto", "head_epochs": 6,
                      "head": "sdn", "gate": GateConfig(hidden=32, classes=True),
                      "gate_train": GateTrainConfig(objective="predict", loss="error", predictors_on="train",
                                                    steps=1000)},
    "cifar10": {"arch": "resnet50_cifar", "epochs": 30, "lr": 0.05, "precision": "auto", "head_epochs": 5,
                "head": "pool", **_LARGE_CALIB},
    "cifar100": {"arch": "resnet50_cifar", "epochs": 30, "lr": 0.05, "precision": "auto", "head_epochs": 5,
                 "head": "pool", **_LARGE_CALIB},
    "imagenette": {"arch": "resnet50", "epochs": 20, "lr": 0.05, "precision": "auto", "head_epochs": 5,
                   "head": "pool", **_LARGE_CALIB},
    "folder": {"arch": "resnet50", "epochs": 20, "lr": 0.05, "precision": "auto", "head_epochs": 5,
               "head": "pool", **_LARGE_CALIB},
}


def dataset_defaults(dataset: str) -> dict:
    """What a run on ``dataset`` uses for every setting left unset (unknown names: ``folder``'s)."""
    return DATASET_DEFAULTS.get(dataset, DATASET_DEFAULTS["folder"])


DEFAULT_MAX_DROP = 0.005  # how the saved model's alpha is chosen when none is asked for
BUDGET_CURVE_STEP = 0.01  # "predict" runs also report a budget solved every this much of cost
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeenetError("--device cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def prepare_out_dir(config: RunConfig, arch: str) -> Path:
    """Create the run directory before any work; refuses an earlier run's unless asked to overwrite.

    The default name is claimed atomically (a run started in the same second gets ``-2``), and
    a path that cannot be created fails here, not after training.
    """
    if config.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return _claim_dir(Path("runs") / f"{config.data.dataset}-{arch}-{stamp}")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise LeenetError(f"--out {out} is a file: choose a directory path")
    if (out / "results.json").exists() and not config.overwrite:
        raise LeenetError(f"{out} already holds a run's results: choose another --out, or add --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeenetError(f"cannot create --out {out} ({exc.strerror or exc}): "
                          f"choose a directory path you can write") from None
    return out


def _claim_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, … if taken (atomic: mkdir fails when it exists)."""
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise LeenetError(f"cannot create {path} ({exc.strerror or exc}): choose a directory with --out") from None
    raise LeenetError(f"{base} and 998 more names like it are taken: choose a directory with --out")


class _Timer:
    """Wall-clock seconds per pipeline phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def run(config: RunConfig, *, log: Callable[[str], None] = print) -> dict:
    """Run the whole pipeline and write every artifact into the run directory.

    Returns:
        The results dict that was written to ``results.json``.
    """
    from leenet import zoo  # heavy imports (torchvision) only when a run starts

    timer = _Timer()
    device = resolve_device(config.device)
    defaults = dataset_defaults(config.data.dataset)
    arch = config.model.arch or defaults["arch"]
    info = zoo.get_backbone_info(arch)
    existed = config.out is not None and Path(config.out).is_dir()
    out = prepare_out_dir(config, arch)
    try:
        return _run_into(out, config, device, defaults, arch, info, timer, log)
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):  # failed before writing: no empty run left
            out.rmdir()


def _run_into(out: Path, config: RunConfig, device: torch.device, defaults: dict, arch: str, info,
              timer: _Timer, log: Callable[[str], None]) -> dict:
    from leenet import data, zoo

    torch.manual_seed(config.seed)

    with timer.phase("data"):
        splits = _load_data(config, info, data)
    spec = splits.spec
    log(f"data: {spec.name}, {len(splits.train)} train / {len(splits.calib)} calibration / "
        f"{len(splits.test)} test images of {spec.in_channels}x{spec.image_size}x{spec.image_size}, "
        f"{spec.num_classes} classes")
    loader = lambda ds, train: data.make_loader(ds, config.data.batch_size, train=train, seed=config.seed)  # noqa: E731

    with timer.phase("backbone"):
        backbone = _build_backbone(config, arch, spec, zoo).to(device)
        activations = _check_fits(backbone, arch, spec, device)
        exits = list(config.model.exits or info.default_exits)
        stages = split_backbone(backbone, exits)  # bad exit names fail here, before any training
        epochs = _backbone_epochs(config, defaults)
        _check_memory(activations, config.data.batch_size, spec.image_size, device,
                      training=epochs > 0 and not config.model.transfer)
        trained = {"epochs": epochs, "lr": None, "precision": None, "transfer": config.model.transfer}
        if epochs > 0:
            precision = resolve_precision(config.train.precision or defaults["precision"], device.type)
            trained.update(lr=config.train.lr or defaults["lr"], precision=precision)
            log(f"backbone: training {arch} for {epochs} epoch{'s' * (epochs != 1)} on {device} in {precision}"
                + (" (classifier only)" if config.model.transfer else ""))
            _train_backbone(backbone, loader(splits.train, True), epochs, config, defaults, device, zoo, precision)
        freeze_(backbone)

    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    head = config.model.head or defaults["head"]
    net = attach_exits(stages, exits, input_shape=input_shape, num_classes=spec.num_classes,
                       head=head, gate_config=config.model.gate or defaults["gate"]).to(device)
    log("exits: " + ", ".join(f"{n} (cost {c:.3f})" for n, c in zip(net.exit_names, net.cost.tolist())))

    with timer.phase("heads"):
        head_epochs = config.train.head_epochs if config.train.head_epochs is not None else defaults["head_epochs"]
        train_loader = loader(splits.train, True)
        train_heads(net, lambda: iter(train_loader), steps_per_epoch=len(train_loader), epochs=head_epochs,
                    lr=config.train.head_lr, device=device, progress=config.progress)

    gate_cfg = config.train.gates or defaults["gate_train"]
    with timer.phase("cache"):
        calib = _cache(net, loader(splits.calib, False), device, config.progress, "calibration")
        test = _cache(net, loader(splits.test, False), device, config.progress, "test")
        fit_on = None  # predict gates fit on the training split see its outputs, unaugmented
        if gate_cfg.predictors_on == "train":
            fit_on = _cache(net, loader(splits.train, False), device, config.progress, "training")

    with timer.phase("gates"):
        bank = fit_gate_sweep(net, calib, config.alphas, gate_cfg, seed=config.seed, progress=config.progress,
                              fit_on=fit_on)

    with timer.phase("evaluate"):
        results, chosen = _evaluate(net, calib, test, bank, config, gate_cfg)
        # the gate settings this run resolved (config.json keeps None where a dataset default applied)
        results["gates"] = {"training": dataclasses.asdict(gate_cfg), "inputs": dataclasses.asdict(net.gate_config)}
        results["leenet_calibration_figures"] = (
            "held out (gates fit on the training split)" if fit_on is not None
            else f"out-of-fold ({gate_cfg.crossfit} folds)" if gate_cfg.crossfit > 1 else "in-sample")
        net.gates.load_state_dict(bank[chosen["alpha"]].gates.state_dict())
        net.threshold = chosen["threshold"]
        results["routed_check"] = _routed_check(net, loader(splits.test, False), device, results["selected"])

    if config.timing:
        with timer.phase("wall_clock"):
            results["wall_clock"] = _wall_clock(net, loader(splits.test, False), device, results["selected"])
        from leenet.report import speed_line  # the report module draws; import it only when a run gets here

        log(speed_line(results["wall_clock"]))

    results.update(_describe(config, arch, spec, splits, net, test, exits))
    # what the run resolved where the config said None (a dataset default): the report shows these
    results["backbone"]["training"] = trained
    results["heads"] = {"kind": head, "epochs": head_epochs, "lr": config.train.head_lr}
    results["timings"] = timer.seconds
    if (out / "results.json").exists() and not config.overwrite:  # another run finished there meanwhile
        taken, out = out, _claim_dir(out)
        _warn(f"{taken} got another run's results while this one worked: writing this run's to {out}")
    _write_artifacts(out, net, results, config, arch, head, input_shape, spec, bank, chosen)
    log(f"wrote {out}/results.json, model.pt and report.html")
    return results


def _train_backbone(backbone, train_loader, epochs: int, config: RunConfig, defaults: dict, device, zoo,
                    precision: str) -> None:
    """Train the whole backbone, or with ``--transfer`` only its classifier (the rest frozen).

    ``precision``: the training arithmetic, already resolved (``"fp32"`` or ``"bf16"``).
    """
    params = None
    if config.model.transfer:
        params = zoo.classifier_parameters(backbone)
        freeze_(backbone)
        for p in params:
            p.requires_grad_(True)
    train_classifier(backbone, lambda: iter(train_loader), steps_per_epoch=len(train_loader), epochs=epochs,
                     lr=config.train.lr or defaults["lr"], params=params, device=device, progress=config.progress,
                     precision=precision)


def _wall_clock(net: ExitNet, test_loader, device, selected: dict) -> dict:
    """Routed network vs plain backbone on the first 256 test images."""
    from leenet.timing import measure_wall_clock

    images = torch.cat([x for x, _ in _take(test_loader, 256)]).to(device)
    clock = measure_wall_clock(net, images)
    clock["flops_speedup"] = 1.0 / max(selected["cost"], 1e-9)
    return clock


def _load_data(config: RunConfig, info, data):
    from leenet.zoo import weights_in_channels

    image_size = config.data.image_size or (info.input_size if info.input_size >= 64 else None)
    pretrained = config.model.weights is not None and _is_enum_name(config.model.weights)
    norm = {"mean": _IMAGENET_MEAN, "std": _IMAGENET_STD} if pretrained and info.imagenet_normalization else {}
    # Grey data on RGB weights is repeated to RGB rather than re-cutting the pretrained stem.
    channels = weights_in_channels(info.name, config.model.weights)
    calib = config.data.calib_size
    calib = int(calib) if calib >= 1 else calib
    return data.load_dataset(config.data.dataset, data_dir=config.data.data_dir, download=config.data.download,
                             calib_size=calib, seed=config.seed, image_size=image_size, channels=channels, **norm)


def _is_enum_name(weights: str) -> bool:
    return not Path(weights).suffix and not Path(weights).exists() and weights.replace("_", "").isalnum()


def _build_backbone(config: RunConfig, arch: str, spec, zoo):
    num_classes = config.model.num_classes or spec.num_classes
    if num_classes != spec.num_classes:
        raise DataError(
            f"--num-classes {num_classes} but {spec.name} has {spec.num_classes} classes: "
            f"use --num-classes {spec.num_classes}"
        )
    if config.model.transfer and config.model.weights is None:
        raise LeenetError("--transfer trains only the classifier of pretrained weights: "
                          "add --weights DEFAULT (or a file), or drop --transfer")
    member = zoo.torchvision_weights(arch, config.model.weights)
    if member is not None and len(member.meta["categories"]) != num_classes and not config.model.transfer \
            and config.train.epochs is None:
        raise LeenetError(
            f"--weights {config.model.weights} has {len(member.meta['categories'])} classes, {spec.name} has "
            f"{num_classes}: the new classifier must be trained; add --transfer (classifier only) or "
            "--epochs N (fine-tune everything)"
        )
    return zoo.build_backbone(arch, num_classes=num_classes, in_channels=spec.in_channels,
                              weights=config.model.weights, transfer=config.model.transfer)


@torch.no_grad()
def _check_fits(backbone, arch: str, spec, device) -> tuple[int, int]:
    """One image through the backbone before any training: wrong sizes fail here, in one line.

    Returns the number of values the backbone's layers output for that image: their sum and
    the largest (what :func:`_check_memory` prices).
    """
    shape = (1, spec.in_channels, spec.image_size, spec.image_size)
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()) if torch.is_tensor(out) else None)
             for m in backbone.modules()  # leaf layers; in-place ones (ReLU(inplace=True)) reuse their input's memory
             if next(m.children(), None) is None and not getattr(m, "inplace", False)]
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(torch.zeros(shape, device=device))
    except RuntimeError as exc:
        raise DataError(
            f"{spec.name} images of shape {shape[1:]} do not fit {arch} ({brief(exc)}): "
            "pick another --arch or set --image-size"
        ) from None
    finally:
        backbone.train(was_training)
        for hook in hooks:
            hook.remove()
    if out.dim() != 2 or out.shape[1] != spec.num_classes:
        raise DataError(
            f"{arch} gives outputs of shape {tuple(out.shape[1:])} but {spec.name} has {spec.num_classes} "
            f"classes: pass --num-classes {spec.num_classes}"
        )
    return sum(sizes), max(sizes, default=0)


def _check_memory(activations: tuple[int, int], batch_size: int, image_size: int, device: torch.device,
                  training: bool) -> None:
    """Refuse a batch whose activations alone cannot fit in free memory, before the OS kills the run.

    Meant to stay below the true need, so that it refuses only runs that cannot fit: training
    keeps every layer's output for the backward pass (priced at 2 bytes a value, bf16's, where
    fp32 keeps 4; weights, gradients and workspace not counted), evaluation at least the
    largest output and its input. Where free memory cannot be read it checks nothing.
    """
    total, largest = activations
    need = batch_size * 2 * (total if training else 2 * largest)
    free = available_memory(device)
    if free is not None and need > free:
        what = "training the backbone" if training else "running the backbone"
        raise DataError(
            f"--batch-size {batch_size} at --image-size {image_size} needs at least {need / 2**30:.1f} GiB for "
            f"{what} but {device.type} has {free / 2**30:.1f} GiB free: lower --batch-size or --image-size"
        )


def available_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on ``device``: the GPU's free memory, or Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _backbone_epochs(config: RunConfig, defaults: dict) -> int:
    if config.train.epochs is not None:
        return config.train.epochs
    if config.model.weights is None or config.model.transfer:
        return defaults["epochs"]
    return 0


def _cache(net: ExitNet, loader, device, progress: bool, name: str) -> CachedOutputs:
    return collect_outputs(net, loader, total=len(loader), device=device, progress=progress,
                           desc=f"caching {name} exits")


def _evaluate(net: ExitNet, calib: CachedOutputs, test: CachedOutputs, bank: dict, config: RunConfig,
              gate_cfg: GateTrainConfig):
    """All policies on both splits; the saved model's alpha and threshold chosen on calibration."""
    ev = Evaluator.of(net, calib, test)
    family, curve = [], []
    for alpha, fit in bank.items():
        candidates = ev.leenet(alpha, fit.gates, net.gate_config, DECISION_THRESHOLDS, fit.calib_probs)
        family += candidates
        curve += [c for c in candidates if c.threshold == net.threshold]
    max_softmax, entropy = ev.confidence("max_softmax"), ev.confidence("entropy")
    singles, oracle = ev.single_exits(), ev.oracle()
    refs = {"calib_reference": singles[-1].calib.accuracy, "test_reference": singles[-1].test.accuracy}
    results = {
        "policies": [c.as_dict() for c in [*curve, *_budget_curve(net, ev, bank, gate_cfg, config.progress),
                                           *max_softmax, *entropy, *singles, oracle]],
        # alpha -> the weight of cost in (1 - a)*loss + a*cost it stood for (GateTrainConfig.alpha_units)
        "raw_alphas": {repr(alpha): fit.raw_alpha for alpha, fit in bank.items()},
        "budget_margin": config.budget_margin,  # standard errors of slack every budget keeps on calibration
        "operating_points": operating_points(
            {"leenet": family, "max_softmax": max_softmax, "entropy": entropy}, *refs.values(),
            margin=config.budget_margin),
    }
    # test-split envelopes, from the first exit's cost: the α-curve and budget curve vs thresholds
    results["versus_thresholds"] = versus_thresholds(results["policies"], float(net.cost[0]))
    chosen = None
    if config.target_cost is not None or config.max_drop is not None:
        budget = find_budget(family, target_cost=config.target_cost, max_drop=config.max_drop,
                             margin=config.budget_margin, **refs)
        results["budget"] = budget
        if budget["reachable"]:
            chosen = {"alpha": budget["alpha"], "threshold": budget["threshold"], "reason": "budget: " + budget["message"]}
    if chosen is None and config.alpha is not None:
        chosen = {"alpha": config.alpha, "threshold": net.threshold, "reason": f"alpha={config.alpha:g} from --alpha"}
    if chosen is None:
        default = find_budget(curve, max_drop=DEFAULT_MAX_DROP, margin=config.budget_margin, **refs)
        alpha = default["alpha"] if default["reachable"] else min(bank)
        chosen = {"alpha": alpha, "threshold": net.threshold,
                  "reason": f"cheapest alpha within {DEFAULT_MAX_DROP * 100:g} pt of the backbone on calibration"}
    pick = next(c for c in family if c.param == chosen["alpha"] and c.threshold == chosen["threshold"])
    results["selected"] = {**pick.as_dict(), "reason": chosen["reason"]}
    return results, chosen


def _budget_curve(net: ExitNet, ev: Evaluator, bank: dict, gate_cfg: GateTrainConfig, progress: bool) -> list:
    """Budget mode solved every :data:`BUDGET_CURVE_STEP` of cost (:meth:`Evaluator.budget_curve`);
    only "predict" gates have the predictors to solve it from, else empty."""
    fit = next(iter(bank.values()))
    return [] if fit.predictors is None else ev.budget_curve(net, fit, gate_cfg, BUDGET_CURVE_STEP, progress=progress)


@torch.no_grad()
def _routed_check(net: ExitNet, loader, device, selected: dict) -> dict:
    """Run the real routed forward on the test split and compare with the simulated policy."""
    net.eval()
    hits, counts, total = 0, torch.zeros(net.num_exits), 0
    for x, y in loader:
        logits, exit_index = net(x.to(device))
        hits += int((logits.argmax(-1).cpu() == y).sum())
        counts += torch.bincount(exit_index.cpu(), minlength=net.num_exits).float()
        total += len(y)
    accuracy, cost = hits / total, float((counts / total * net.routed_cost().cpu()).sum())
    # The simulation summed in float32: agree to well under one sample in a million.
    same = math.isclose(accuracy, selected["accuracy"], abs_tol=1e-6) and math.isclose(
        cost, selected["cost"], rel_tol=1e-5)
    return {"accuracy": accuracy, "cost": cost, "exit_fractions": (counts / total).tolist(),
            "matches_simulation": same}


def _take(loader, count: int):
    seen = 0
    for x, y in loader:
        if seen >= count:
            break
        yield x[: count - seen], y[: count - seen]
        seen += len(x)


def _describe(config: RunConfig, arch: str, spec, splits, net: ExitNet, test: CachedOutputs, exits) -> dict:
    correct = test.correct.float().mean(0).tolist()
    flops = float(net.backbone_flops)
    return {
        "leenet_version": __version__,
        "dataset": spec.name,
        "dataset_info": {"num_classes": spec.num_classes,
                         "image_shape": [spec.in_channels, spec.image_size, spec.image_size],
                         "num_train": len(splits.train), "num_calib": len(splits.calib), "num_test": len(splits.test)},
        "backbone": {"name": arch, "accuracy": correct[-1], "flops": int(flops), "macs": int(flops // 2)},
        "flops_convention": FLOPS_CONVENTION,
        "exits": [{"name": name, "cost": c, "accuracy": acc, "flops": int(round(c * flops))}  # the net cut there
                  for name, c, acc in zip(net.exit_names, CostModel.of(net).single_exits().tolist(),
                                          correct)],
        "config": config.to_dict(),
    }


def _write_artifacts(out: Path, net: ExitNet, results: dict, config: RunConfig, arch: str, head: str,
                     input_shape, spec, bank: dict, chosen: dict) -> None:
    from leenet.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    build_spec = {
        "arch": arch, "exits": net.exit_names[:-1], "num_classes": spec.num_classes,
        "input_shape": list(input_shape), "head": head,
        "gate": dict(vars(net.gate_config)), "threshold": net.threshold,
        "alpha": chosen["alpha"], "dataset": spec.name, "mean": list(spec.mean), "std": list(spec.std),
    }
    save_checkpoint(out / "model.pt", net, build_spec, gate_bank={a: fit.gates for a, fit in bank.items()})
    _write_json(out / "config.json", config.to_dict())
    _write_json(out / "results.json", results)  # before the report: a drawing failure must not lose the run
    try:
        write_report(results, out)
    except (OSError, ValueError) as exc:
        _warn(f"the report could not be drawn ({exc}); the results are saved: retry with `leenet report {out}`")


def _warn(message: str) -> None:
    """A one-line warning on stderr, shown even with --quiet: something the user must know about."""
    print(f"warning: {message}", file=sys.stderr)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
