"""The stages of a run that a resumed run can skip: the trained backbone, the exit heads, the
cached outputs and the gate fits. Each is computed (training and caching shared by every process
torchrun started) or read back from the run directory, and saved there once finished."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from leenet.backbones.registry import build_backbone, torchvision_weights
from leenet.backbones.weights import classifier_parameters
from leenet.config import RunConfig
from leenet.data import Splits, make_loader
from leenet.distributed import Processes, ShardedLoader, gather
from leenet.errors import DataError, LeenetError
from leenet.finetune import finetune_backbone
from leenet.nn.combine import ensemble_for
from leenet.nn.model import ExitNet
from leenet.nn.split import split_backbone
from leenet.policy.cache import CachedOutputs, cache_from_state, cache_state, collect_outputs, merge_shards
from leenet.policy.fit import GateProblem
from leenet.policy.sweep import GateFit, fit_gate_sweep
from leenet.preflight import check_fits, check_memory
from leenet.progress import bars_shown
from leenet.resume import EpochCheckpoint, RunState
from leenet.train import freeze_, resolve_precision, train_classifier, train_heads

Log = Callable[[str], None]


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
                          weights=model.weights, transfer=model.transfer, image_size=spec.image_size)


def _train_loader(config: RunConfig, procs: Processes, ds):
    """A fresh training loader: shuffled and augmented; this process's shard of every epoch."""
    if procs.distributed:
        return ShardedLoader(ds, config.data.batch_size, train=True, seed=config.seed, procs=procs)
    return make_loader(ds, config.data.batch_size, train=True, seed=config.seed)


def eval_loader(config: RunConfig, ds):
    return make_loader(ds, config.data.batch_size, train=False, seed=config.seed)


def backbone_stage(config: RunConfig, splits: Splits, procs: Processes, state: RunState,
                    log: Log) -> tuple[torch.nn.Module, dict]:
    """Build the backbone, check that it cuts at the exits, train it here (or reuse the trained one
    saved) and freeze it; also what was trained, for the report."""
    model, train, spec, device = config.model, config.train, splits.spec, procs.device
    backbone = _build_backbone(config, spec).to(device)
    activations = check_fits(backbone, model.arch, spec, device)
    split_backbone(backbone, list(model.exits))  # bad exit names fail here, before any training
    check_memory(activations, config.data.batch_size, spec.image_size, device,
                 training=train.epochs > 0 and not model.transfer)
    trained = {"epochs": train.epochs, "lr": None, "precision": None, "transfer": model.transfer}
    if train.epochs > 0:
        precision = resolve_precision(train.precision, device.type)
        trained.update(lr=train.lr, precision=precision)
        saved = state.load("backbone")
        if saved is not None:
            backbone.load_state_dict(saved["state"])
        else:
            log(f"backbone: training {model.arch} for {train.epochs} epoch{'s' * (train.epochs != 1)} on {device} "
                f"in {precision}" + (" (classifier only)" if model.transfer else "") + _shares(config, procs))
            _train_backbone(backbone, config, splits, procs, state, precision, log)
            state.save("backbone", {"state": backbone.state_dict()})
            state.drop("backbone-epoch")
    freeze_(backbone)
    return backbone, trained


def _shares(config: RunConfig, procs: Processes) -> str:
    """How several processes split a step (nothing for one)."""
    if not procs.distributed:
        return ""
    size = config.data.batch_size
    return (f", {procs.world} processes x batch {size} = {procs.world * size} images a step "
            f"(the learning rate is not scaled)")


def _train_backbone(backbone: torch.nn.Module, config: RunConfig, splits: Splits, procs: Processes,
                    state: RunState, precision: str, log: Log) -> None:
    """Train the whole backbone, or with ``--transfer`` only its classifier (the rest frozen),
    saving the training state after every epoch.

    ``precision``: the training arithmetic, already resolved (``"fp32"`` or ``"bf16"``).
    """
    params = None
    if config.model.transfer:
        params = classifier_parameters(backbone)
        freeze_(backbone)
        for p in params:
            p.requires_grad_(True)
    loader = _train_loader(config, procs, splits.train)
    train_classifier(backbone, lambda: iter(loader), steps_per_epoch=len(loader),
                     epochs=config.train.epochs, lr=config.train.lr, params=params, device=procs.device,
                     progress=config.progress, precision=precision, procs=procs, log=log,
                     checkpoint=EpochCheckpoint(state, "backbone-epoch", loader, config.train.epochs))


def heads_stage(net: ExitNet, config: RunConfig, splits: Splits, procs: Processes, state: RunState,
                 log: Log) -> None:
    """Train the exit heads on the frozen stages, or reuse the ones saved."""
    train = config.train
    saved = state.load("heads")
    if saved is not None:
        for stage in net.stages:
            freeze_(stage)
        net.heads.load_state_dict(saved["state"])
        if net.cascade is not None:
            net.cascade.load_state_dict(saved.get("cascade") or {})
        net.heads.eval()
        return
    loader = _train_loader(config, procs, splits.train)
    train_heads(net, lambda: iter(loader), steps_per_epoch=len(loader), epochs=train.head_epochs,
                lr=train.head_lr, device=procs.device, progress=config.progress, procs=procs, log=log,
                checkpoint=EpochCheckpoint(state, "heads-epoch", loader, train.head_epochs),
                distill=train.distill, temperature=train.distill_temperature)
    state.save("heads", {"state": net.heads.state_dict(),
                         "cascade": None if net.cascade is None else net.cascade.state_dict()})
    state.drop("heads-epoch")


def finetune_stage(net: ExitNet, config: RunConfig, splits: Splits, procs: Processes, state: RunState,
                   log: Log) -> dict:
    """Fine-tune the backbone as ``--backbone-training`` says (alone before the heads, or jointly
    with the fitted heads), or reuse the fine-tune saved; returns its record for results.json."""
    train, device = config.train, procs.device
    joint = train.backbone_training == "joint"
    parts = {"stages": net.stages, **({"heads": net.heads, "cascade": net.cascade} if joint else {})}
    saved = state.load("finetune")
    if saved is not None:
        for key, module in parts.items():
            if module is not None:
                module.load_state_dict(saved[key])
        freeze_(net.stages)
        net.heads.eval()
        return saved["record"]
    loader = _train_loader(config, procs, splits.train)
    epochs = int(train.finetune_epochs)
    log(f"{train.backbone_training}: fine-tuning the backbone{' with its heads' if joint else ''} for {epochs} "
        f"epoch{'s' * (epochs != 1)}, backbone learning rate {train.head_lr * train.backbone_lr_scale:g}")
    record = finetune_backbone(
        net, lambda: iter(loader), lambda: iter(eval_loader(config, splits.calib)), steps_per_epoch=len(loader),
        epochs=epochs, joint=joint, lr=train.head_lr, backbone_lr_scale=train.backbone_lr_scale,
        distill=train.distill, temperature=train.distill_temperature, weighting=train.joint_weighting, device=device,
        precision=resolve_precision(train.precision, device.type), progress=config.progress, procs=procs, log=log,
        checkpoint=EpochCheckpoint(state, "finetune-epoch", loader, epochs))
    state.save("finetune", {**{key: None if m is None else m.state_dict() for key, m in parts.items()},
                            "record": record})
    state.drop("finetune-epoch")
    return record


def cache_stage(net: ExitNet, config: RunConfig, splits: Splits, procs: Processes, state: RunState,
                log: Log) -> dict[str, CachedOutputs] | None:
    """Every exit's outputs on calibration, test and (for predictors fit there) training
    images: on rank 0, gathered from every process; None on the other ranks. Where no bar
    is drawn, one line per split (the training split can take minutes)."""
    saved = state.load("cache", everywhere=False)
    if saved is not None:
        return {name: cache_from_state(cache) for name, cache in saved.items()}
    # predict gates fit on the training split see its outputs, unaugmented
    wanted = {"calib": (splits.calib, "calibration"), "test": (splits.test, "test")}
    if config.train.gates.predictors_on == "train":
        wanted["training"] = (splits.train, "training")
    caches = {}
    for key, (ds, name) in wanted.items():
        start = time.perf_counter()
        caches[key] = _cache(net, ds, config, procs, name)
        if config.progress and not bars_shown(config.progress):
            log(f"cached the {name} outputs of {len(ds)} images, {time.perf_counter() - start:.1f} s")
    if procs.is_main:
        state.save("cache", {key: cache_state(cache) for key, cache in caches.items()})
    return caches if procs.is_main else None


def _cache(net: ExitNet, ds, config: RunConfig, procs: Processes, name: str) -> CachedOutputs | None:
    """One split's outputs; with several processes each caches its batches, tagged with their
    sample indices, and rank 0 puts them together without the padding repeats."""
    loader = (ShardedLoader(ds, config.data.batch_size, train=False, seed=config.seed, procs=procs)
              if procs.distributed else eval_loader(config, ds))
    cache = collect_outputs(net, loader, total=len(loader), device=procs.device, progress=config.progress,
                            desc=f"caching {name} exits")
    if not procs.distributed:
        return cache
    shards = gather((cache, loader.indices()), procs)
    return merge_shards(shards, len(ds)) if procs.is_main else None


def ensemble_stage(net: ExitNet, caches: dict[str, CachedOutputs], config: RunConfig,
                   log: Log) -> dict[str, CachedOutputs]:
    """Fit the exits' ensemble on the calibration outputs, put it in the network, and return
    every cache as the ensembled network gives it (seconds: no pass over the data)."""
    calib = caches["calib"]
    ensemble = ensemble_for(calib.logits, calib.labels, config.model.ensemble, config.model.ensemble_final,
                            seed=config.seed)
    net.set_ensemble(ensemble)
    combined = {key: cache.combined(ensemble) for key, cache in caches.items()}
    accuracy = [f"{100 * float(a):.2f}" for a in combined["calib"].correct.float().mean(0)]
    log(f"ensembled exits ({ensemble.kind}, final exit {'in' if ensemble.final else 'the backbone alone'}): "
        f"calibration accuracy {' / '.join(accuracy)} % (in sample)")
    return combined


def gates_stage(net: ExitNet, caches: dict[str, CachedOutputs], config: RunConfig,
                 state: RunState) -> dict[float, GateFit]:
    """Gates for every alpha of the sweep, or the ones saved."""
    saved = state.load("gates", everywhere=False)
    if saved is not None:
        return {alpha: _fit_from_state(net, fit) for alpha, fit in zip(saved["alphas"], saved["fits"])}
    bank = fit_gate_sweep(GateProblem.of(net), caches["calib"], config.alphas, config.train.gates,
                          seed=config.seed, progress=config.progress, fit_on=caches.get("training"))
    state.save("gates", {"alphas": list(bank), "fits": [_fit_state(fit) for fit in bank.values()]})
    return bank


def _fit_state(fit: GateFit) -> dict:
    def weights(modules):
        return None if modules is None else {k: v.detach().cpu() for k, v in modules.state_dict().items()}
    return {"gates": weights(fit.gates), "calib_probs": fit.calib_probs, "raw_alpha": fit.raw_alpha,
            "predictors": weights(fit.predictors), "scores": fit.scores}


def _fit_from_state(net: ExitNet, saved: dict) -> GateFit:
    def modules(weights):
        if weights is None:
            return None
        gates = copy.deepcopy(net.gates).cpu()
        gates.load_state_dict(weights)
        return gates.eval()
    return GateFit(modules(saved["gates"]), saved["calib_probs"], saved["raw_alpha"],
                   modules(saved["predictors"]), saved["scores"])
