"""The typed, versioned schema of a run's ``results.json``: what a run records and the report reads.

Accuracies are fractions and costs are mean FLOPs relative to the plain backbone. A field typed
``X | None`` is an optional section or figure: ``None`` in Python, absent from the file.
Everything else is required; a file that lacks it, or holds the wrong type, is refused in one
line (:class:`~leenet.errors.LeenetError`).

Versions:
    1: files without ``schema_version`` (runs and benchmarks before the schema). Read by
       :func:`migrate`: an operating point without ``reachable`` was reachable.
    2: ``schema_version: 2``; adds the optional ``gallery`` section.
    3: adds ``backbone.training.mode`` and, for a fine-tuned backbone, ``backbone.training.fine_tune``.
       Read by :func:`migrate`: before it every run kept its backbone frozen once trained.

Keys outside the schema at the top level (a benchmark's own records: ``seeds`` aside, e.g.
``targets``, ``levers``, ``machine``) are kept verbatim in :attr:`Results.extra`; unknown keys
inside a section are dropped on reading.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from leenet.errors import LeenetError, brief
from leenet.files import replace_atomically
from leenet.report.parse import build, plain

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Score:
    """A policy's figures on one split (the calibration split, or a budget's test figures)."""

    accuracy: float
    cost: float
    exit_fractions: tuple[float, ...] | None = None  # (E,) share of samples leaving at each exit


@dataclass(frozen=True)
class Policy:
    """One evaluated exit policy on the test split."""

    method: str  # "leenet", "leenet_budget", "max_softmax", "entropy", "single_exit" or "oracle"
    param: int | float | None  # alpha, budget, confidence threshold, exit index; None for the oracle
    accuracy: float
    cost: float
    exit_fractions: tuple[float, ...] | None = None  # (E,) share of test samples leaving at each exit
    threshold: float | None = None  # LEENet's gate decision threshold; None for other methods
    accuracy_std: float | None = None  # over seeds, in multi-seed benchmarks
    cost_std: float | None = None
    calib: Score | None = None  # the same policy on the calibration split


@dataclass(frozen=True)
class Selected(Policy):
    """The saved model's policy and why the run chose it."""

    reason: str | None = None


@dataclass(frozen=True)
class OperatingPoint:
    """The best setting of one method for one budget, chosen on calibration and reported on test."""

    name: str  # e.g. "accuracy at <= 50% FLOPs"
    method: str
    reachable: bool  # False: no setting met the budget on calibration; the figures below are None
    kind: str | None = None  # "max_cost" or "max_drop"
    target: float | None = None  # the cost fraction or the accuracy drop (a fraction)
    param: int | float | None = None
    threshold: float | None = None
    accuracy: float | None = None
    cost: float | None = None
    accuracy_std: float | None = None
    cost_std: float | None = None
    exit_fractions: tuple[float, ...] | None = None
    calib: Score | None = None
    met_on_test: bool | None = None
    met_on_test_seeds: int | None = None  # multi-seed benchmarks: seeds whose budget held


@dataclass(frozen=True)
class Budget:
    """The budget a run was asked for (--target-cost or --max-drop) and what met it."""

    kind: str  # "target_cost" or "max_drop"
    target: float
    reachable: bool
    message: str  # one line: what was chosen and whether it held, or what to relax
    margin: float | None = None  # standard errors of slack kept on calibration
    alpha: float | None = None
    threshold: float | None = None
    calib: Score | None = None
    test: Score | None = None
    met_on_test: bool | None = None


@dataclass(frozen=True)
class Exit:
    """One exit, every sample leaving there."""

    name: str
    cost: float
    accuracy: float
    flops: int | None = None
    accuracy_std: float | None = None


@dataclass(frozen=True)
class FineTune:
    """The backbone's fine-tune after its exits were fitted (leenet.finetune), measured on calibration."""

    mode: str  # "finetune" (the backbone alone, heads fitted after) or "joint" (with its heads)
    epochs: int
    backbone_lr: float
    chosen_epoch: int  # the epoch kept; 0: the network as it was before the fine-tune
    fell_back: bool  # epoch 0 kept: no epoch kept the final exit within 0.1 pt of its accuracy before, or none beat it
    message: str  # the choice, in one line
    final_accuracy: tuple[float, ...]  # (epochs + 1,) the final exit's, before the fine-tune and after each epoch
    early_accuracy: tuple[tuple[float, ...], ...] | None = None  # joint: (epochs + 1, E-1) the early exits'
    head_lr: float | None = None  # joint: the heads' learning rate
    distill: float | None = None  # joint: the early exits' weight on the final exit's softened logits
    weighting: str | None = None  # joint: "ramp" (SDN) or "equilibrium" (IMTA's gradient equilibrium)
    train_loss: tuple[float, ...] | None = None  # (epochs,) mean weighted training loss of each epoch


@dataclass(frozen=True)
class BackboneTraining:
    """How the backbone was trained in the run (None figures: not trained here)."""

    epochs: int | None = None
    lr: float | None = None
    precision: str | None = None
    transfer: bool | None = None
    mode: str | None = None  # after the heads: "frozen", "finetune" or "joint" (None: no training record)
    fine_tune: FineTune | None = None  # "finetune" and "joint": what the fine-tune did


@dataclass(frozen=True)
class Backbone:
    name: str
    accuracy: float  # test accuracy of the plain backbone (the final exit)
    flops: int | None = None
    macs: int | None = None
    accuracy_std: float | None = None
    training: BackboneTraining | None = None  # None: a run older than this record


@dataclass(frozen=True)
class Heads:
    kind: str  # exit head kind, e.g. "flatten", "pool", "sdn"
    epochs: int | None = None
    lr: float | None = None
    distill: float | None = None  # weight of the backbone's soft targets (None: a run older than this record)
    distill_temperature: float | None = None
    cascade: str | None = None  # "off", "detach" or "grad"
    ensemble: str | None = None  # "off", "geometric" or "linear"
    ensemble_final: bool | None = None  # whether the final exit is ensembled too (None: no ensemble)


@dataclass(frozen=True)
class GateSettings:
    """The gate settings the run resolved, as the config dataclasses' own dicts."""

    training: dict[str, Any]  # GateTrainConfig
    inputs: dict[str, Any]  # GateConfig


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    image_shape: tuple[int, ...]  # (C, H, W)
    num_train: int | None = None
    num_calib: int | None = None
    num_test: int | None = None


@dataclass(frozen=True)
class EnvelopeGap:
    """A LEENet curve's upper envelope against the better threshold baseline's, on test."""

    area: float  # between the envelopes (accuracy × cost); positive: LEENet more accurate
    worst_gap: float  # accuracy difference at the worst cost
    worst_cost: float
    max_jump: float  # largest cost step between neighbouring settings


@dataclass(frozen=True)
class RoutedCheck:
    """The real routed forward on test, against the simulated policy."""

    accuracy: float
    cost: float
    matches_simulation: bool
    exit_fractions: tuple[float, ...] | None = None


@dataclass(frozen=True)
class WallClock:
    """Measured speed of the routed model against the plain backbone; absent figures were not measured."""

    device: str | None = None
    throughput_batch: int | None = None
    latency_samples: int | None = None
    backbone_throughput: float | None = None  # images/s
    leenet_throughput: float | None = None
    measured_speedup: float | None = None  # throughput ratio
    backbone_latency_ms: float | None = None  # per image at batch 1
    leenet_latency_ms: float | None = None
    latency_speedup: float | None = None
    flops_speedup: float | None = None


@dataclass(frozen=True)
class GalleryExit:
    name: str
    left: int  # test samples that left at this exit
    indices: tuple[int, ...]  # test-split indices shown, drawn from those that left here


@dataclass(frozen=True)
class GallerySection:
    """Which test images the exit gallery shows; their thumbnails live in the run directory's ``file``."""

    file: str  # thumbnails file name in the run directory (leenet.report.gallery)
    seed: int  # of the draw
    total: int  # test samples
    class_names: tuple[str, ...]
    exits: tuple[GalleryExit, ...]
    final_wrong: tuple[int, ...]  # indices the final exit (the backbone) gets wrong, a drawn few
    final_wrong_count: int  # all test samples the final exit gets wrong
    class_exit_share: tuple[tuple[float, ...], ...]  # (classes, exits): share of a class leaving at each exit


@dataclass(frozen=True)
class Results:
    """A run's results: the content of ``results.json``."""

    dataset: str
    backbone: Backbone
    exits: tuple[Exit, ...]
    policies: tuple[Policy, ...]
    schema_version: int = SCHEMA_VERSION
    leenet_version: str | None = None
    dataset_info: DatasetInfo | None = None
    flops_convention: str | None = None
    selected: Selected | None = None
    budget: Budget | None = None
    budget_margin: float | None = None
    operating_points: tuple[OperatingPoint, ...] | None = None
    versus_thresholds: dict[str, EnvelopeGap] | None = None  # LEENet curve name -> gap
    raw_alphas: dict[str, float] | None = None  # alpha (repr) -> the cost weight it stood for
    gates: GateSettings | None = None
    heads: Heads | None = None
    leenet_calibration_figures: str | None = None  # how LEENet's calibration figures were measured
    routed_check: RoutedCheck | None = None
    wall_clock: WallClock | None = None
    timings: dict[str, float] | None = None  # phase -> seconds
    config: dict[str, Any] | None = None  # RunConfig.to_dict(): the request, None where a default applied
    seeds: tuple[int, ...] | None = None  # multi-seed benchmarks: figures are means over these
    gallery: GallerySection | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # top-level keys outside the schema, verbatim

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``results.json`` (None fields left out, ``extra`` merged at the top)."""
        out = plain(self)
        extra = out.pop("extra", {})
        return {**out, **{k: v for k, v in extra.items() if k not in out}}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "results") -> Results:
        """Read a results object of any known version; raise a one-line LeenetError if it is damaged."""
        if not isinstance(raw, Mapping):
            raise LeenetError(f"{where} is not a LEENet results file (not a JSON object): rerun `leenet run`")
        if missing := [k for k in ("exits", "backbone", "policies", "dataset") if k not in raw]:
            raise LeenetError(f"{where} is not a LEENet results file (it lacks {', '.join(missing)}): "
                              "rerun `leenet run`")
        version = raw.get("schema_version", 1)  # version 1 files predate the field
        if version in range(1, SCHEMA_VERSION):
            raw = migrate(raw)
        elif version != SCHEMA_VERSION:
            raise LeenetError(f"{where} has results schema version {version!r}; this LEENet reads 1 to "
                              f"{SCHEMA_VERSION}: upgrade LEENet to read it")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: v for k, v in raw.items() if k not in known}
        return build(cls, {**{k: v for k, v in raw.items() if k in known}, "extra": extra}, where)


def migrate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An older results object as the current version: what the older versions left implicit, explicit."""
    version = raw.get("schema_version", 1)
    out = {**raw, "schema_version": SCHEMA_VERSION}
    if version == 1 and isinstance(raw.get("operating_points"), list):  # every point listed was reachable
        out["operating_points"] = [{"reachable": True, **p} if isinstance(p, Mapping) else p
                                   for p in raw["operating_points"]]
    backbone = raw.get("backbone")
    if isinstance(backbone, Mapping) and isinstance(backbone.get("training"), Mapping):  # the backbone stayed frozen
        out["backbone"] = {**backbone, "training": {"mode": "frozen", **backbone["training"]}}
    return out


def read_results(path: str | os.PathLike) -> Results:
    """Read ``results.json`` (any known version); a missing or damaged file raises a one-line LeenetError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # also JSON and Unicode decoding errors
        raise LeenetError(f"cannot read {path} ({exc.__class__.__name__}: {brief(exc, 80)}): pass a finished "
                          "run directory") from None
    return Results.from_dict(raw, where=str(path))


def write_results(path: str | os.PathLike, results: Results) -> Path:
    """Write ``results`` as JSON at ``path`` atomically (a temporary file, then a rename); returns the path."""
    text = json.dumps(results.to_dict(), indent=2) + "\n"
    return replace_atomically(path, lambda f: f.write(text.encode("utf-8")))
