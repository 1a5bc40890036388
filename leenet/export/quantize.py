"""int8 stage graphs: onnxruntime static quantization of a float32 export, stage by stage.

Each stage graph of a float32 export (:func:`leenet.export.export_onnx`) is pre-processed
(``quant_pre_process``: shape inference and graph optimizations), then quantized statically in
QDQ form with per-channel int8 weights. Stage ``k``'s activation ranges are calibrated on what
the already quantized stages ``0..k-1`` produce, i.e. on the inputs it will see when it runs,
through :meth:`leenet_runtime.ExitRunner.feeds` and :meth:`~leenet_runtime.ExitRunner.step`.

Nodes are chosen by name: the torch exporter names the backbone's ``/stages.<k>/...`` and the
exit head's ``/heads.<k>/...`` (:class:`~leenet.export.onnx.StageGraph` holds them as
``net.stages[k]`` and ``net.heads[k]``). Both are quantized by default (measured on Fashion-MNIST's
deep heads: as accurate on calibration as float32 heads, 1.3x faster, docs/int8.md); the gates and
everything between (confidence features, ensembles) stay float32: they are tiny, and they decide.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from leenet.errors import LeenetError, brief
from leenet_runtime import ExitRunner
from leenet_runtime.manifest import Quantization

ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}  # activation types
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}  # activation range calibration
PARTS = ("backbone", "backbone+heads")  # which nodes become int8
# Fewer images than this set activation ranges from too few extremes (MinMax: a range seen on
# a few images is clipped on many test images) and leave the threshold refit choosing among a
# handful of outcomes (one image moves calibration accuracy by more than 0.5 pt below 200).
MIN_CALIB_IMAGES = 200
CALIB_BATCH = 64  # images per calibration batch (bounds the memory of the carried features)


@dataclass(frozen=True)
class QuantizeOptions:
    """How stage graphs are quantized (chosen by measurement: docs/int8.md)."""

    activations: str = "uint8"  # "uint8" or "int8": signed activations run slower on x86 (VNNI is u8 x s8)
    method: str = "minmax"  # activation range calibration: "minmax", "entropy" or "percentile"
    calib_images: int = 1024  # calibration images (a seeded sample of the split) that set the ranges
    quantize: str = "backbone+heads"  # "backbone+heads" (gates float32) or "backbone" (heads float32 too)
    seed: int = 0  # which calibration images set the ranges

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise LeenetError(f"unknown activation type {self.activations!r} (valid: {', '.join(ACTIVATIONS)})")
        if self.method not in METHODS:
            raise LeenetError(f"unknown calibration method {self.method!r} (valid: {', '.join(METHODS)})")
        if self.quantize not in PARTS:
            raise LeenetError(f"unknown quantized part {self.quantize!r} (valid: {', '.join(PARTS)})")
        if self.calib_images < MIN_CALIB_IMAGES:
            raise LeenetError(f"--calib-images {self.calib_images} is too few to set int8 ranges: use at least "
                              f"{MIN_CALIB_IMAGES}")

    def describe(self, *, refit: str, refit_images: int, calibration_images: int) -> Quantization:
        """The manifest's record of these options."""
        return Quantization(format="QDQ", activations=self.activations, weights="int8 per-channel",
                            method=self.method, calibration_images=calibration_images, quantized=self.quantize,
                            refit=refit, refit_images=refit_images, onnxruntime=ort.__version__)


def calibration_sample(images: np.ndarray, options: QuantizeOptions) -> np.ndarray:
    """A seeded sample of ``options.calib_images`` of ``images`` (N, C, H, W), in the split's order.

    Raises:
        LeenetError: fewer than :data:`MIN_CALIB_IMAGES` images.
    """
    n = len(images)
    if n < MIN_CALIB_IMAGES:
        raise LeenetError(f"{n} calibration images are too few to quantize (at least {MIN_CALIB_IMAGES}: fewer set "
                          "int8 ranges from too few extremes and leave the threshold refit coarse): hold out more "
                          "images with `leenet run --calib-size`")
    if n <= options.calib_images:
        return images
    rows = np.sort(np.random.default_rng(options.seed).choice(n, options.calib_images, replace=False))
    return images[rows]


class _Feeds(CalibrationDataReader):
    """The calibration batches of one stage graph, one feed dict each."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def stage_nodes(stage: int, part: str = "backbone") -> tuple[str, ...]:
    """Name prefixes of the nodes of stage graph ``stage`` that ``part`` quantizes."""
    return (f"/stages.{stage}/",) if part == "backbone" else (f"/stages.{stage}/", f"/heads.{stage}/")


def quantize_graph(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]], options: QuantizeOptions,
                   prefixes: tuple[str, ...] | None = None) -> None:
    """Quantize the graph ``source`` into ``target``, calibrated on ``feeds`` (its input batches).

    Args:
        source, target: ONNX files.
        feeds: the calibration batches, one feed dict (input name → array) each.
        options: activation type and calibration method (``options.quantize`` is ``prefixes``' business).
        prefixes: quantize only the nodes whose names start with one of these (:func:`stage_nodes`);
            None: every node (a plain backbone).

    Raises:
        LeenetError: onnxruntime cannot pre-process, quantize or load the graph (an operator it
            cannot quantize or run in int8).
    """
    with tempfile.TemporaryDirectory(prefix="leenet-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            with warnings.catch_warnings(), _quiet_onnxruntime():
                warnings.simplefilter("ignore")
                quant_pre_process(str(source), str(pre))
                nodes = None if prefixes is None else [
                    n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(prefixes)]
                if nodes == []:  # nothing of the backbone in this graph: it stays float32
                    shutil.copyfile(source, target)
                    return
                quantize_static(str(pre), str(target), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=ACTIVATIONS[options.activations],
                                weight_type=QuantType.QInt8, calibrate_method=METHODS[options.method],
                                nodes_to_quantize=nodes)
            ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnx, the quantizer and onnxruntime raise many types
            target.unlink(missing_ok=True)
            raise LeenetError(f"{source.name} does not quantize to int8 ({brief(exc)}): export without --int8, or "
                              "use a backbone without the operator") from None


def quantize_stages(runner: ExitRunner, out_dir: Path, images: np.ndarray, options: QuantizeOptions) -> None:
    """Write an int8 copy of every stage graph of ``runner``'s export into ``out_dir``, stage by stage.

    Stage ``k`` is calibrated on what the int8 stages before it give for ``images``; ``runner``'s
    sessions are replaced by the int8 ones as they are made (so ``runner`` ends up routing
    through the int8 graphs).

    Args:
        runner: a router over the float32 export.
        out_dir: the directory the int8 graphs are written into (same file names).
        images: (N, C, H, W) float32 calibration images, already sampled (:func:`calibration_sample`).
        options: quantization settings.
    """
    carries = [runner.start(images[k: k + CALIB_BATCH]) for k in range(0, len(images), CALIB_BATCH)]
    for i, entry in enumerate(runner.manifest.exits):
        target = out_dir / entry.graph
        feeds = [runner.feeds(i, c) for c in carries]
        quantize_graph(runner.export_dir / entry.graph, target, feeds, options, stage_nodes(i, options.quantize))
        try:
            runner.sessions[i] = ort.InferenceSession(str(target), runner.sessions[i].get_session_options(),
                                                      providers=runner.sessions[i].get_providers())
        except Exception as exc:  # as in quantize_graph: the graph has no kernel here
            raise LeenetError(f"{entry.graph} does not load in int8 ({brief(exc)}): export without --int8") from None
        if i < runner.num_stages - 1:
            carries = [runner.step(i, c, route=False).rest for c in carries]


def exit_outputs(runner: ExitRunner, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`ExitRunner.all_exits` over ``images`` in batches: logits (N, E, K), exit_prob (N, E-1)."""
    parts = [runner.all_exits(images[k: k + batch]) for k in range(0, len(images), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def routed(runner: ExitRunner, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``runner`` routing ``images`` in batches: logits (N, K) and exit index (N,)."""
    parts = [runner(images[k: k + batch]) for k in range(0, len(images), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence the quantizer's logging (it reports every node it skips) while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
