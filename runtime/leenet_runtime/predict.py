"""Classify image files with an exported LEENet (``leenet-runtime predict``, :mod:`leenet_runtime.cli`).

Every engine (this runtime, ``leenet.predict`` with torch) reads files with
:func:`iter_batches` and describes results with :func:`make_records`, so both print the
same records::

    {"file": "a.png", "class": "cat", "class_index": 3, "confidence": 0.97,
     "exit": "layer2", "exit_index": 1, "cost": 0.42}
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from leenet_runtime.manifest import ExportError, Preprocessing
from leenet_runtime.preprocess import check_value_max, expand_paths, load_images
from leenet_runtime.runner import ExitRunner

RECORD_KEYS = ("file", "class", "class_index", "confidence", "exit", "exit_index", "cost")


def report_error(message: str) -> None:
    """Print a file's one-line error on stderr (the default of ``on_error``)."""
    print(f"error: {message}", file=sys.stderr)


def iter_batches(paths: Sequence[str | Path], prep: Preprocessing, *, batch_size: int = 64,
                 value_max: float | None = None,
                 on_error: Callable[[str], None] = report_error) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """Preprocessed batches (N, C, H, W) float32 of ``paths`` (directories: their images) and their files.

    Files that cannot be read are passed to ``on_error`` (one line each) and skipped.
    ``value_max`` is the file value of full brightness (default: each file's bit depth's full
    scale, 255 for 8-bit; see :mod:`leenet_runtime.preprocess`).
    """
    if batch_size < 1:
        raise ExportError(f"batch size must be at least 1, got {batch_size}")
    if value_max is not None:
        check_value_max(value_max)
    files = expand_paths(paths)
    for start in range(0, len(files), batch_size):
        batch, read, errors = load_images(files[start:start + batch_size], prep, value_max=value_max)
        for message in errors:
            on_error(message)
        if read:
            yield batch, read


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits → (N,) largest class probability."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p.max(axis=1) / p.sum(axis=1)


def make_records(files: Sequence[Path], logits: np.ndarray, exit_index: np.ndarray, *,
                 class_names: Sequence[str], exit_names: Sequence[str], costs: Sequence[float]) -> list[dict]:
    """One record per file (keys :data:`RECORD_KEYS`) from routed logits (N, K) and exit_index (N,)."""
    predicted = logits.argmax(axis=1)
    confidence = softmax_confidence(logits)
    return [
        {"file": str(f), "class": class_names[k], "class_index": int(k), "confidence": float(c),
         "exit": exit_names[e], "exit_index": int(e), "cost": float(costs[e])}
        for f, k, c, e in zip(files, predicted.tolist(), confidence.tolist(), exit_index.tolist())
    ]


def predict(runner: ExitRunner, paths: Sequence[str | Path], *, batch_size: int = 64,
            value_max: float | None = None, on_error: Callable[[str], None] = report_error) -> Iterator[dict]:
    """Classify image files (or directories of them) with ``runner``, yielding one record per image."""
    manifest = runner.manifest
    for batch, files in iter_batches(paths, manifest.preprocessing, batch_size=batch_size,
                                     value_max=value_max, on_error=on_error):
        logits, exit_index = runner(batch)
        yield from make_records(files, logits, exit_index, class_names=manifest.class_names,
                                exit_names=runner.exit_names, costs=runner.costs.tolist())


def format_record(record: dict, as_json: bool) -> str:
    """A record as one line: JSON, or ``file  class  confidence  exit  cost`` for people."""
    if as_json:
        return json.dumps(record)
    return (f"{record['file']}\t{record['class']}\t{record['confidence']:.3f}\t"
            f"exit {record['exit']}\tcost {record['cost']:.3f}")
