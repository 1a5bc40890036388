"""The exit gallery for benchmark reports: what ``leenet run`` draws from its saved model, drawn
from one seed's fitted gates instead.

A benchmark keeps no saved model, only its per-seed fits; :func:`selected_exits` routes a cached
split with the gates of one alpha at one decision threshold exactly as the evaluator measured
them (:meth:`leenet.evaluate.Evaluator.leenet`), and :func:`add_gallery` turns those exits into
the gallery section of ``results.json`` and its ``gallery.npz`` beside it, as
:func:`leenet.pipeline._gallery` and ``_write_artifacts`` do for a run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from leenet.config import GateConfig
from leenet.data import stored_images
from leenet.policy import CachedOutputs
from leenet.policy.simulate import first_exit, gate_probabilities
from leenet.policy.sweep import GateFit
from leenet.report import gallery_from_outputs, write_gallery_file


def fit_at(fits: Mapping[float, GateFit], alpha: float) -> GateFit:
    """The fit of ``alpha`` in an alpha → :class:`GateFit` sweep (alphas read back from JSON match
    to within 1e-9); a KeyError naming the alphas there when it has none."""
    for key, fit in fits.items():
        if math.isclose(float(key), float(alpha), rel_tol=0.0, abs_tol=1e-9):
            return fit
    raise KeyError(f"no gates fit at alpha {alpha}; the sweep has {sorted(fits)}")


@torch.no_grad()
def selected_exits(net, fits: Mapping[float, GateFit], gate_config: GateConfig, cache: CachedOutputs,
                   alpha: float, threshold: float) -> Tensor:
    """Each sample's exit on a cached split under the gates fit at ``alpha`` and decision ``threshold``.

    Computed as :meth:`leenet.evaluate.Evaluator.leenet` measures a candidate: the gates'
    probabilities on ``cache.gate_inputs(gate_config)``, then the first exit whose probability
    reaches the threshold (the final exit where none does).

    Args:
        net: the :class:`~leenet.nn.model.ExitNet` the fits belong to (checked against the cache).
        fits: alpha → :class:`~leenet.policy.sweep.GateFit`, e.g. ``run_seed(...)["methods"][m]["fits"]``.
        gate_config: the gate inputs the fits were made for (the method's, not ``net``'s leftover).
        cache: the split's cached outputs (usually the test split).
        alpha, threshold: the setting, e.g. ``results["selected"]["param"]`` and ``["threshold"]``.

    Returns:
        (N,) int64 exit indices in ``0..E-1``.
    """
    if cache.logits.shape[1] != net.num_exits:
        raise ValueError(f"the cache has {cache.logits.shape[1]} exits, the network {net.num_exits}")
    gates = fit_at(fits, alpha).gates
    if len(gates) != net.num_exits - 1:
        raise ValueError(f"the fit has {len(gates)} gates for {net.num_exits - 1} early exits")
    return first_exit(gate_probabilities(gates, cache.gate_inputs(gate_config)) >= threshold)


def add_gallery(results: dict, out_dir: Path, test_dataset: Dataset, test: CachedOutputs, exits: Tensor,
                class_names: Sequence[str], *, exit_names: Sequence[str] | None = None, seed: int = 0) -> None:
    """Draw the exit gallery of the routing ``exits`` on the test split into ``results`` and ``out_dir``.

    ``results["gallery"]`` gets the section as ``leenet run`` stores it
    (``dataclasses.asdict`` of :class:`~leenet.report.results.GallerySection`), and
    ``out_dir/gallery.npz`` the thumbnails; ``leenet.report.write_report(results, out_dir)``
    then draws ``<section id="gallery">``.

    Args:
        results: a results dict; its ``exits`` name the exits unless ``exit_names`` does.
        out_dir: the report's directory (created if missing).
        test_dataset: the test split ``test`` was cached from, in the same order.
        test: its cached outputs: each sample's prediction is its exit's argmax, the final
            exit's the last exit's.
        exits: (N,) each sample's exit, e.g. from :func:`selected_exits`.
        class_names: the dataset's class names.
        seed: of the draw of images.
    """
    exits = torch.as_tensor(exits).long().cpu()
    logits = test.logits
    if len(exits) != len(logits) or len(test_dataset) != len(logits):
        raise ValueError(f"{len(exits)} exits, {len(logits)} cached outputs and {len(test_dataset)} test images "
                         "disagree: pass the test split the outputs were cached from")
    names = list(exit_names) if exit_names is not None else [e["name"] for e in results["exits"]]
    predictions = logits[torch.arange(len(exits)), exits].argmax(-1)
    images, value_max = stored_images(test_dataset)
    section, thumbnails = gallery_from_outputs(images, test.labels, predictions, exits, logits[:, -1].argmax(-1),
                                               names, class_names, value_max=value_max, seed=seed)
    results["gallery"] = dataclasses.asdict(section)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_gallery_file(out_dir, thumbnails)
