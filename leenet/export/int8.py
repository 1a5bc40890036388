"""``leenet export RUN_DIR --out DIR --int8``: int8 stage graphs with the exit policy refit on them.

The steps, all in onnxruntime on the graphs that ship: export float32 graphs
(:func:`~leenet.export.onnx.export_onnx`); quantize them stage by stage on the run's own
calibration images (:mod:`leenet.export.quantize`); collect every exit's outputs on the
calibration split through the int8 graphs and refit the decision threshold for the saved alpha
or budget (:mod:`leenet.export.refit`); evaluate both splits end to end against float32 and
write ``quantization.json`` (:mod:`leenet.export.quant_report`) and the manifest (version 3,
``precision: "int8"``). Everything is written in a temporary directory beside ``out`` and
renamed into place at the end: a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leenet.errors import LeenetError
from leenet.export.metadata import load_run, run_splits, split_arrays
from leenet.export.onnx import DEFAULT_OPSET, export_onnx
from leenet.export.quant_report import REPORT_VERSION, SPEED, QuantReport, split_figures, write_report
from leenet.export.quantize import QuantizeOptions, calibration_sample, exit_outputs, quantize_stages, routed
from leenet.export.refit import REFIT, SavedPolicy, refit_threshold, route
from leenet.nn.model import ExitNet
from leenet.report.results import read_results
from leenet_runtime import ExitRunner
from leenet_runtime.manifest import MANIFEST_NAME, Preprocessing, read_manifest, version_for, write_manifest


@dataclass(frozen=True)
class LabeledImages:
    """Images as the network reads them and their labels."""

    images: np.ndarray  # (N, C, H, W) float32, preprocessed and normalized
    labels: np.ndarray  # (N,) int64


def export_int8(source: str | Path | ExitNet, out_dir: str | Path, *, options: QuantizeOptions | None = None,
                opset: int = DEFAULT_OPSET, calib: LabeledImages | None = None, test: LabeledImages | None = None,
                policy: SavedPolicy | None = None, class_names: list[str] | None = None,
                preprocessing: Preprocessing | None = None) -> Path:
    """Write an int8 export of a run (or an ExitNet) into the new directory ``out_dir``.

    Args:
        source: a run directory from ``leenet run`` (or its ``model.pt``), or an ExitNet.
        out_dir: must not exist (or be an empty directory); written only when everything succeeded.
        options: how the graphs are quantized (default: :class:`QuantizeOptions`'s defaults).
        opset: ONNX opset of the float32 graphs that are quantized.
        calib: the calibration split (default for a run: rebuilt from its config; needed for an ExitNet).
        test: the test split (default for a run: rebuilt from its config; needed for an ExitNet).
        policy: the setting the refit keeps (default for a run: from its ``results.json``; needed
            for an ExitNet).
        class_names: as for :func:`~leenet.export.onnx.export_onnx`.
        preprocessing: as for :func:`~leenet.export.onnx.export_onnx`.

    Returns:
        The path of the written ``manifest.json``.

    Raises:
        LeenetError: ``out_dir`` exists, no ``model.pt`` in the run directory, its data cannot be
            read, too few calibration images, a graph that does not quantize, or no threshold
            that lets the int8 network exit early for the saved setting.
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise LeenetError(f"{out} already exists: pass a new directory for the int8 export (nothing was written)")
    if isinstance(source, ExitNet):
        if calib is None or test is None or policy is None:
            raise LeenetError("an int8 export of an ExitNet needs its calibration and test images and its saved "
                              "setting: pass calib=, test= and policy=")
        net = source
    else:
        run_dir = Path(source) if Path(source).is_dir() else Path(source).parent
        net, prep, names = load_run(source)  # refuses a directory without model.pt
        class_names, preprocessing = class_names or list(names), preprocessing or prep
        policy = policy or SavedPolicy.of_results(read_results(run_dir / "results.json"))
        if calib is None or test is None:
            splits = run_splits(run_dir)
            calib = calib or LabeledImages(*split_arrays(splits.calib))
            test = test or LabeledImages(*split_arrays(splits.test))
    options = options or QuantizeOptions()
    sample = calibration_sample(calib.images, options)  # refuses too few images before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.int8-", dir=out.parent))  # same file system: one rename
    try:
        export_onnx(net, work / "float32", opset=opset, class_names=class_names, preprocessing=preprocessing)
        _int8(work / "float32", work / "int8", calib, test, sample, policy, options)
        os.replace(work / "int8", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out / MANIFEST_NAME


def _int8(float_dir: Path, out: Path, calib: LabeledImages, test: LabeledImages, sample: np.ndarray,
          policy: SavedPolicy, options: QuantizeOptions) -> None:
    """Quantize the export in ``float_dir`` into ``out``, refit, evaluate, and write its manifest and report."""
    threads = torch.get_num_threads()  # as the rest of LEENet (OMP_NUM_THREADS), not every core spinning
    runner = ExitRunner(float_dir, threads=threads)
    float_outs = {"calib": exit_outputs(runner, calib.images), "test": exit_outputs(runner, test.images)}
    out.mkdir()
    quantize_stages(runner, out, sample, options)  # the runner now routes through the int8 graphs
    int8_outs = {"calib": exit_outputs(runner, calib.images), "test": exit_outputs(runner, test.images)}
    manifest = runner.manifest
    costs = runner.costs.tolist()
    spent = np.asarray(costs)[route(float_outs["calib"][1], manifest.threshold)]  # (N,) float32 policy, calib
    refit = refit_threshold(*int8_outs["calib"], calib.labels, costs, policy.loss, spent, manifest.threshold)
    control = refit_threshold(*float_outs["calib"], calib.labels, costs, policy.loss, spent, manifest.threshold)
    quantization = options.describe(refit=REFIT, refit_images=len(calib.labels), calibration_images=len(sample))
    fields = {"linked": manifest.linked, "final_heads": manifest.final_heads, "precision": "int8",
              "quantization": quantization}
    write_manifest(out, dataclasses.replace(manifest, version=version_for(**fields), threshold=refit, files={},
                                            **fields))
    thresholds = (manifest.threshold, refit, control)
    names = [e.name for e in manifest.exits]
    figures = {split: split_figures(names, costs, data.labels, float_outs[split], int8_outs[split], thresholds)
               for split, data in (("calib", calib), ("test", test))}
    logits, exits = routed(ExitRunner(out, threads=threads), test.images)  # end to end, as a user runs it
    simulated = route(int8_outs["test"][1], refit)
    rows = np.arange(len(exits))
    matches = bool(np.array_equal(exits, simulated)
                   and np.array_equal(logits.argmax(1), int8_outs["test"][0][rows, simulated].argmax(1)))
    write_report(out, QuantReport(version=REPORT_VERSION, quantization=quantization, policy=policy.describe(),
                                  calibration=figures["calib"], test=figures["test"], routed_matches=matches,
                                  speed=SPEED))
    write_manifest(out, read_manifest(out, verify=False))  # hash the report too
