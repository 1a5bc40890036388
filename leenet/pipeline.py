"""`leenet run` as a library call: resolve → data → backbone → exits → heads → cache → gates →
select → write, each phase timed."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from leenet.backbones.registry import build_backbone, get_backbone_info, torchvision_weights, weights_in_channels
from leenet.backbones.weights import classifier_parameters
from leenet.checkpoint import save_checkpoint
from leenet.config import RunConfig
from leenet.data import Splits, load_dataset, make_loader
from leenet.datasets.folder import IMAGENET_MEAN, IMAGENET_STD, FolderImages
from leenet.datasets.memory import TensorImageDataset
from leenet.defaults import resolve
from leenet.errors import DataError, LeenetError
from leenet.evaluate.compare import versus_thresholds
from leenet.evaluate.evaluator import DECISION_THRESHOLDS, Evaluator
from leenet.evaluate.select import choose_saved, operating_points
from leenet.evaluate.timing import measure_wall_clock
from leenet.export.metadata import preprocessing_of
from leenet.nn.cost import FLOPS_CONVENTION, CostModel
from leenet.nn.model import ExitNet, attach_exits
from leenet.nn.split import split_backbone
from leenet.policy.cache import CachedOutputs, collect_outputs
from leenet.policy.fit import GateProblem
from leenet.policy.sweep import GateFit, fit_gate_sweep
from leenet.preflight import check_fits, check_memory
from leenet.report import (
    Results,
    Thumbnails,
    gallery_from_outputs,
    speed_line,
    write_gallery_file,
    write_report,
    write_results,
)
from leenet.report.results import GallerySection
from leenet.rundir import claim_dir, prepare_out_dir, warn, write_json
from leenet.train import freeze_, resolve_precision, train_classifier, train_heads
from leenet.version import __version__

BUDGET_CURVE_STEP = 0.01  # "predict" runs also report a budget solved every this much of cost


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeenetError("--device cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


class _Timer:
    """Wall-clock seconds per pipeline phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def run(config: RunConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run the whole pipeline and write every artifact into the run directory.

    Args:
        config: what to run; None = the defaults (digits). Unset (None) settings take the
            dataset's defaults (:func:`leenet.defaults.resolve`).
        log: where progress lines go.

    Returns:
        The results dict that was written to ``results.json``.
    """
    config = config or RunConfig()
    resolved = resolve(config)
    device = resolve_device(config.device)
    existed = config.out is not None and Path(config.out).is_dir()
    out = prepare_out_dir(config.out, config.data.dataset, resolved.model.arch, overwrite=config.overwrite)
    try:
        return _run_into(out, config, resolved, device, log)
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):  # failed before writing: no empty run left
            out.rmdir()


def _run_into(out: Path, asked: RunConfig, config: RunConfig, device: torch.device,
              log: Callable[[str], None]) -> dict:
    """The phases of :func:`run`; ``asked`` is the request as given, ``config`` it resolved."""
    timer = _Timer()
    model, train = config.model, config.train
    torch.manual_seed(config.seed)
    with timer.phase("data"):
        splits = _load_data(config)
    spec = splits.spec
    log(f"data: {spec.name}, {len(splits.train)} train / {len(splits.calib)} calibration / "
        f"{len(splits.test)} test images of {spec.in_channels}x{spec.image_size}x{spec.image_size}, "
        f"{spec.num_classes} classes")

    def loader(ds, shuffle: bool):
        return make_loader(ds, config.data.batch_size, train=shuffle, seed=config.seed)

    with timer.phase("backbone"):
        backbone = _build_backbone(config, spec).to(device)
        activations = check_fits(backbone, model.arch, spec, device)
        stages = split_backbone(backbone, list(model.exits))  # bad exit names fail here, before any training
        check_memory(activations, config.data.batch_size, spec.image_size, device,
                     training=train.epochs > 0 and not model.transfer)
        trained = {"epochs": train.epochs, "lr": None, "precision": None, "transfer": model.transfer}
        if train.epochs > 0:
            precision = resolve_precision(train.precision, device.type)
            trained.update(lr=train.lr, precision=precision)
            log(f"backbone: training {model.arch} for {train.epochs} epoch{'s' * (train.epochs != 1)} on {device} "
                f"in {precision}" + (" (classifier only)" if model.transfer else ""))
            _train_backbone(backbone, loader(splits.train, True), config, device, precision)
        freeze_(backbone)

    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    net = attach_exits(stages, model.exits, input_shape=input_shape, num_classes=spec.num_classes,
                       head=model.head, gate_config=model.gate).to(device)
    log("exits: " + ", ".join(f"{n} (cost {c:.3f})" for n, c in zip(net.exit_names, net.cost.tolist())))

    with timer.phase("heads"):
        train_loader = loader(splits.train, True)
        train_heads(net, lambda: iter(train_loader), steps_per_epoch=len(train_loader), epochs=train.head_epochs,
                    lr=train.head_lr, device=device, progress=config.progress)

    gate_cfg = train.gates
    with timer.phase("cache"):
        calib = _cache(net, loader(splits.calib, False), device, config.progress, "calibration")
        test = _cache(net, loader(splits.test, False), device, config.progress, "test")
        fit_on = None  # predict gates fit on the training split see its outputs, unaugmented
        if gate_cfg.predictors_on == "train":
            fit_on = _cache(net, loader(splits.train, False), device, config.progress, "training")

    with timer.phase("gates"):
        bank = fit_gate_sweep(GateProblem.of(net), calib, config.alphas, gate_cfg, seed=config.seed,
                              progress=config.progress, fit_on=fit_on)

    with timer.phase("evaluate"):
        results, chosen = _evaluate(net, calib, test, bank, config)
        # the gate settings this run resolved (config.json keeps None where a dataset default applied)
        results["gates"] = {"training": dataclasses.asdict(gate_cfg), "inputs": dataclasses.asdict(net.gate_config)}
        results["leenet_calibration_figures"] = (
            "held out (gates fit on the training split)" if fit_on is not None
            else f"out-of-fold ({gate_cfg.crossfit} folds)" if gate_cfg.crossfit > 1 else "in-sample")
        net.gates.load_state_dict(bank[chosen["alpha"]].gates.state_dict())
        net.threshold = chosen["threshold"]
        results["routed_check"], routed = _routed_check(net, loader(splits.test, False), device, results["selected"])
    with timer.phase("gallery"):
        gallery, thumbnails = _gallery(splits, net, test, routed, config.seed)
        results["gallery"] = dataclasses.asdict(gallery)

    if config.timing:
        with timer.phase("wall_clock"):
            results["wall_clock"] = _wall_clock(net, loader(splits.test, False), device, results["selected"])
        log(speed_line(results["wall_clock"]))

    results.update(_describe(asked, model.arch, splits, net, test))
    # what the run resolved where the config said None (a dataset default): the report shows these
    results["backbone"]["training"] = trained
    results["heads"] = {"kind": model.head, "epochs": train.head_epochs, "lr": train.head_lr}
    results["timings"] = timer.seconds
    if (out / "results.json").exists() and not config.overwrite:  # another run finished there meanwhile
        taken, out = out, claim_dir(out)
        warn(f"{taken} got another run's results while this one worked: writing this run's to {out}")
    _write_artifacts(out, net, results, asked, config, splits, bank, chosen, thumbnails)
    log(f"wrote {out}/results.json, model.pt and report.html")
    return results


def _load_data(config: RunConfig) -> Splits:
    info = get_backbone_info(config.model.arch)
    image_size = config.data.image_size or (info.input_size if info.input_size >= 64 else None)
    pretrained = torchvision_weights(info.name, config.model.weights) is not None
    norm = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if pretrained and info.imagenet_normalization else {}
    # Grey data on RGB weights is repeated to RGB rather than re-cutting the pretrained stem.
    channels = weights_in_channels(info.name, config.model.weights)
    calib = config.data.calib_size
    calib = int(calib) if calib >= 1 else calib
    return load_dataset(config.data.dataset, data_dir=config.data.data_dir, download=config.data.download,
                        calib_size=calib, seed=config.seed, image_size=image_size, channels=channels, **norm)


def _build_backbone(config: RunConfig, spec) -> torch.nn.Module:
    model = config.model
    num_classes = model.num_classes or spec.num_classes
    if num_classes != spec.num_classes:
        raise DataError(f"--num-classes {num_classes} but {spec.name} has {spec.num_classes} classes: "
                        f"use --num-classes {spec.num_classes}")
    if model.transfer and model.weights is None:
        raise LeenetError("--transfer trains only the classifier of pretrained weights: "
                          "add --weights DEFAULT (or a file), or drop --transfer")
    member = torchvision_weights(model.arch, model.weights)
    if member is not None and len(member.meta["categories"]) != num_classes and not model.transfer \
            and config.train.epochs == 0:
        raise LeenetError(
            f"--weights {model.weights} has {len(member.meta['categories'])} classes, {spec.name} has "
            f"{num_classes}: the new classifier must be trained; add --transfer (classifier only) or "
            "--epochs N (fine-tune everything)")
    return build_backbone(model.arch, num_classes=num_classes, in_channels=spec.in_channels,
                          weights=model.weights, transfer=model.transfer)


def _train_backbone(backbone: torch.nn.Module, train_loader, config: RunConfig, device: torch.device,
                    precision: str) -> None:
    """Train the whole backbone, or with ``--transfer`` only its classifier (the rest frozen).

    ``precision``: the training arithmetic, already resolved (``"fp32"`` or ``"bf16"``).
    """
    params = None
    if config.model.transfer:
        params = classifier_parameters(backbone)
        freeze_(backbone)
        for p in params:
            p.requires_grad_(True)
    train_classifier(backbone, lambda: iter(train_loader), steps_per_epoch=len(train_loader),
                     epochs=config.train.epochs, lr=config.train.lr, params=params, device=device,
                     progress=config.progress, precision=precision)


def _cache(net: ExitNet, loader, device: torch.device, progress: bool, name: str) -> CachedOutputs:
    return collect_outputs(net, loader, total=len(loader), device=device, progress=progress,
                           desc=f"caching {name} exits")


def _evaluate(net: ExitNet, calib: CachedOutputs, test: CachedOutputs, bank: dict[float, GateFit],
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
def _routed_check(net: ExitNet, loader, device: torch.device, selected: dict) -> tuple[dict, tuple[Tensor, Tensor]]:
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


def _gallery(splits: Splits, net: ExitNet, test: CachedOutputs, routed: tuple[Tensor, Tensor],
             seed: int) -> tuple[GallerySection, Thumbnails]:
    """The saved model's exit gallery on the test split: its section of results.json and its thumbnails."""
    predictions, exit_index = routed
    if isinstance(splits.test, TensorImageDataset):  # in memory: uint8 as stored (digits: 0..16)
        images, value_max = splits.test.images, splits.test.value_max
    else:  # image files: decoded on demand, eval-cropped as the model saw them
        images, value_max = FolderImages(splits.test), 255.0
    return gallery_from_outputs(images, test.labels, predictions, exit_index, test.logits[:, -1].argmax(-1),
                                net.exit_names, splits.spec.class_names, value_max=value_max, seed=seed)


def _wall_clock(net: ExitNet, test_loader, device: torch.device, selected: dict) -> dict:
    """Routed network vs plain backbone on the first 256 test images."""
    images, seen = [], 0
    for x, _ in test_loader:
        images.append(x[: 256 - seen])
        seen += len(images[-1])
        if seen >= 256:
            break
    clock = measure_wall_clock(net, torch.cat(images).to(device))
    clock["flops_speedup"] = 1.0 / max(selected["cost"], 1e-9)
    return clock


def _describe(asked: RunConfig, arch: str, splits: Splits, net: ExitNet, test: CachedOutputs) -> dict:
    spec = splits.spec
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
                  for name, c, acc in zip(net.exit_names, CostModel.of(net).single_exits().tolist(), correct)],
        "config": asked.to_dict(),
    }


def _write_artifacts(out: Path, net: ExitNet, results: dict, asked: RunConfig, config: RunConfig, splits: Splits,
                     bank: dict[float, GateFit], chosen: dict, thumbnails: Thumbnails) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spec = splits.spec
    input_shape = [spec.in_channels, spec.image_size, spec.image_size]
    build_spec = {
        "arch": config.model.arch, "exits": net.exit_names[:-1], "num_classes": spec.num_classes,
        "input_shape": [spec.in_channels, spec.image_size, spec.image_size], "head": config.model.head,
        "gate": dataclasses.asdict(net.gate_config), "threshold": net.threshold,
        "alpha": chosen["alpha"], "dataset": spec.name, "mean": list(spec.mean), "std": list(spec.std),
        # what `leenet export` and `leenet predict` need to read image files like the test images
        "class_names": list(spec.class_names),
        "preprocessing": dataclasses.asdict(preprocessing_of(splits, input_shape, spec.mean, spec.std)),
    }
    save_checkpoint(out / "model.pt", net, build_spec, gate_bank={a: fit.gates for a, fit in bank.items()})
    write_json(out / "config.json", asked.to_dict())
    typed = Results.from_dict(results)  # the run's results checked against the schema
    write_results(out / "results.json", typed)  # before the report: a drawing failure must not lose the run
    write_gallery_file(out, thumbnails)
    try:
        write_report(typed, out)
    except (OSError, ValueError) as exc:
        warn(f"the report could not be drawn ({exc}); the results are saved: retry with `leenet report {out}`")
