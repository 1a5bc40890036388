"""`leenet run` as a library call: resolve → data → backbone → exits → heads → cache → gates →
select → write, each phase timed; started by torchrun, the training and caching phases are shared
by every process and the rest is done by rank 0 (:mod:`leenet.distributed`). Each finished stage
is saved in the run directory, and a run resumed there goes on from the last one (:mod:`leenet.resume`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from leenet.backbones.registry import get_backbone_info, torchvision_weights, weights_in_channels
from leenet.checkpoint import save_checkpoint
from leenet.config import RunConfig
from leenet.data import Splits, load_dataset, stored_images
from leenet.datasets.folder import IMAGENET_MEAN, IMAGENET_STD
from leenet.defaults import resolve
from leenet.distributed import Processes, each_machine_first, process_group
from leenet.errors import LeenetError
from leenet.evaluate.latency import measure_latency, use_costs_
from leenet.evaluate.run import describe_run, evaluate_run, wall_clock
from leenet.export.metadata import preprocessing_of
from leenet.nn.attach import attach_exits
from leenet.nn.cost import CostModel
from leenet.nn.model import ExitNet
from leenet.policy.cache import CachedOutputs
from leenet.policy.sweep import GateFit
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
from leenet.resume import RunState
from leenet.rundir import STAGES, claim_dir, prepare_out_dir, resume_dir, warn, write_json
from leenet.stages import (
    Log,
    backbone_stage,
    cache_stage,
    ensemble_stage,
    eval_loader,
    finetune_stage,
    gates_stage,
    heads_stage,
)


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


def run(config: RunConfig | None = None, *, log: Log = print, resume: bool = False,
        on_stop: Callable[[Path], None] | None = None) -> dict | None:
    """Run the whole pipeline and write every artifact into the run directory.

    Args:
        config: what to run; None = the defaults (digits). Unset (None) settings take the
            dataset's defaults (:func:`leenet.defaults.resolve`).
        log: where progress lines go (rank 0 only).
        resume: ``config.out`` is an interrupted run of the same settings: reuse its finished stages.
        on_stop: called with the run directory when the run is interrupted (Ctrl-C, SIGTERM)
            after saving some stage, e.g. to say how to resume it.

    Returns:
        The results dict that was written to ``results.json``; None on ranks other than 0.
    """
    config = config or RunConfig()
    resolved = resolve(config)
    with process_group(resolve_device(config.device)) as procs:
        if not procs.is_main:  # one log and one progress bar, not one per process
            log, resolved = _silent, dataclasses.replace(resolved, progress=False)
        existed = config.out is not None and Path(config.out).is_dir()
        out = None
        if procs.is_main:
            out = resume_dir(config.out) if resume else prepare_out_dir(
                config.out, config.data.dataset, resolved.model.arch, overwrite=config.overwrite)
        try:
            state = RunState(out, config.to_dict(), procs, resume=resume, defaults=RunConfig().to_dict())
            if resume:
                log(f"resume: reusing {state.summary()} from {out}")
            return _run_into(out, config, resolved, procs, state, log)
        except (KeyboardInterrupt, SystemExit):
            if out is not None and on_stop is not None and any((out / STAGES).glob("*.pt")):
                on_stop(out)
            raise
        finally:
            if out is not None and not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # failed before writing: no empty run left


def _silent(message: str) -> None:
    pass


def _run_into(out: Path | None, asked: RunConfig, config: RunConfig, procs: Processes, state: RunState,
              log: Log) -> dict | None:
    """The phases of :func:`run`; ``asked`` is the request as given, ``config`` it resolved."""
    timer = _Timer()
    torch.manual_seed(config.seed)
    with timer.phase("data"), each_machine_first(procs):
        splits = _load_data(config)
    spec = splits.spec
    log(f"data: {spec.name}, {len(splits.train)} train / {len(splits.calib)} calibration / "
        f"{len(splits.test)} test images of {spec.in_channels}x{spec.image_size}x{spec.image_size}, "
        f"{spec.num_classes} classes")
    with timer.phase("backbone"):
        backbone, trained = backbone_stage(config, splits, procs, state, log)
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    net = attach_exits(backbone, config.model.exits, input_shape=input_shape, num_classes=spec.num_classes,
                       head=config.model.head, gate_config=config.model.gate,
                       cascade=config.model.cascade).to(procs.device)
    log("exits: " + ", ".join(f"{n} (cost {c:.3f})" for n, c in zip(net.exit_names, net.cost.tolist())))
    tuning, tuned = config.train.backbone_training, None
    if tuning == "finetune":  # the backbone alone first, then heads fitted on it frozen
        with timer.phase("finetune"):
            tuned = finetune_stage(net, config, splits, procs, state, log)
    with timer.phase("heads"):
        heads_stage(net, config, splits, procs, state, log)
    if tuning == "joint":  # the backbone with the heads fitted on it frozen
        with timer.phase("finetune"):
            tuned = finetune_stage(net, config, splits, procs, state, log)
    with timer.phase("cache"):
        caches = cache_stage(net, config, splits, procs, state, log)
    if not procs.is_main:  # gates, evaluation and every file are rank 0's
        return None
    plain_test = caches["test"]  # the heads' own outputs: the final column is the backbone's
    if config.model.ensemble != "off":
        with timer.phase("ensemble"):
            caches = ensemble_stage(net, caches, config, log)
    flops_costs = CostModel.of(net).clone()  # a copy: latency costs replace the network's own
    latency = None
    if config.cost == "latency":
        with timer.phase("latency"):
            latency = measure_latency(net, batch_size=config.latency_batch, device=procs.device)
            use_costs_(net, latency)  # cost, head_cost, gate_cost become relative time; backbone_flops stays
        log("exits in time: " + ", ".join(f"{n} (cost {c:.3f})" for n, c in zip(net.exit_names, net.cost.tolist())))
    with timer.phase("gates"):
        bank = gates_stage(net, caches, config, state)
    results, chosen, thumbnails = _results(net, caches, bank, config, splits, procs.device, timer, log, flops_costs)
    results.update(describe_run(asked, config.model.arch, splits, net, caches["test"], flops_costs, plain_test))
    results["cost"] = {  # the unit the gates, budgets and every "cost" of this file use, and both figures
        "unit": config.cost, "flops": flops_costs.to_dict(),
        "latency": None if latency is None else latency.to_dict()}
    # what the run resolved where the config said None (a dataset default): the report shows these
    results["backbone"]["training"] = {**trained, "mode": tuning, "fine_tune": tuned}
    results["heads"] = {"kind": config.model.head, "epochs": config.train.head_epochs, "lr": config.train.head_lr,
                        "distill": config.train.distill, "distill_temperature": config.train.distill_temperature,
                        "cascade": config.model.cascade, "ensemble": config.model.ensemble,
                        "ensemble_final": None if net.ensemble is None else net.ensemble.final}
    results["timings"] = timer.seconds
    if (out / "results.json").exists() and not config.overwrite:  # another run finished there meanwhile
        taken, out = out, claim_dir(out)
        warn(f"{taken} got another run's results while this one worked: writing this run's to {out}")
    _write_artifacts(out, net, results, asked, config, splits, bank, chosen, thumbnails)
    state.finish()
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


def _results(net: ExitNet, caches: dict[str, CachedOutputs], bank: dict[float, GateFit], config: RunConfig,
             splits: Splits, device: torch.device, timer: _Timer, log: Log,
             flops_costs: CostModel) -> tuple[dict, dict, Thumbnails]:
    """Every policy evaluated, the saved model chosen and checked, its gallery and speed."""
    with timer.phase("evaluate"):
        results, chosen, routed = evaluate_run(net, caches, bank, config, eval_loader(config, splits.test), device)
    with timer.phase("gallery"):
        gallery, thumbnails = _gallery(splits, net, caches["test"], routed, config.seed)
        results["gallery"] = dataclasses.asdict(gallery)
    if config.timing:
        with timer.phase("wall_clock"):
            fractions = torch.tensor(results["selected"]["exit_fractions"], dtype=torch.float64)
            flops = float((fractions * flops_costs.routed(net.enabled_exits().cpu()).double()).sum())
            results["wall_clock"] = wall_clock(net, eval_loader(config, splits.test), device, flops)
        log(speed_line(results["wall_clock"]))
    return results, chosen, thumbnails


def _gallery(splits: Splits, net: ExitNet, test: CachedOutputs, routed: tuple[Tensor, Tensor],
             seed: int) -> tuple[GallerySection, Thumbnails]:
    """The saved model's exit gallery on the test split: its section of results.json and its thumbnails."""
    predictions, exit_index = routed
    images, value_max = stored_images(splits.test)
    return gallery_from_outputs(images, test.labels, predictions, exit_index, test.logits[:, -1].argmax(-1),
                                net.exit_names, splits.spec.class_names, value_max=value_max, seed=seed)


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
        "cost_unit": config.cost,  # what net.cost counts: "flops" or "latency" (relative time)
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
