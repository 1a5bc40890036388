"""Classify image files with a saved run (torch) or an export (onnxruntime), one record per image.

Both engines read and preprocess files with :mod:`leenet_runtime.preprocess` and describe
results with :func:`leenet_runtime.predict.make_records`, so their records are the same::

    for record in predict_files("runs/digits-…/", ["a.png", "more/"]):
        print(record["file"], record["class"], record["exit"], record["cost"])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from leenet.config import ENGINES
from leenet.errors import LeenetError
from leenet_runtime import ExitRunner, ExportError
from leenet_runtime.manifest import MANIFEST_NAME
from leenet_runtime.predict import iter_batches, make_records, predict, report_error

if TYPE_CHECKING:
    import torch


def predict_files(model_path: str | Path, paths: Sequence[str | Path], *, engine: str = "torch",
                  batch_size: int = 64, value_max: float | None = None, device: str | torch.device = "cpu",
                  on_error: Callable[[str], None] = report_error) -> Iterator[dict]:
    """Classify image files (or directories of them), yielding one record per image read.

    Args:
        model_path: a run directory (or its ``model.pt``) for ``engine="torch"``; a directory
            written by :func:`leenet.export.export_onnx` for ``engine="onnx"``.
        paths: image files, or directories whose image files are read in name order.
        engine: ``"torch"`` routes with :class:`~leenet.ExitNet`; ``"onnx"`` with
            :class:`leenet_runtime.ExitRunner` (CUDA if onnxruntime has it, else CPU; on the
            CPU with as many threads as the torch engine, without loading torch).
        batch_size: images routed together.
        value_max: file value of full brightness (default: the files' bit depth's, 255 for 8-bit,
            which maps onto the training images' range, e.g. 0..16 for digits).
        device: where the torch engine runs.
        on_error: called with a one-line message for each file that cannot be read (default:
            printed on stderr); the other files still run.

    Yields:
        ``{"file", "class", "class_index", "confidence", "exit", "exit_index", "cost"}``.

    Raises:
        LeenetError: unknown engine, a model path of the other engine's kind, a missing
            checkpoint or export, or an altered export.
    """
    if engine not in ENGINES:
        raise LeenetError(f"unknown engine {engine!r} (valid: {', '.join(ENGINES)})")
    path = Path(model_path)
    is_export = (path / MANIFEST_NAME).is_file()
    if engine == "onnx" and not is_export:
        raise LeenetError(f"{path} is not an export (no {MANIFEST_NAME}): export the run first with "
                          f"`leenet export {path} OUT_DIR`, or use the torch engine")
    if engine == "torch" and is_export:
        raise LeenetError(f"{path} is an ONNX export: use the onnx engine (--engine onnx), or pass the run directory")
    try:
        if engine == "onnx":
            runner = ExitRunner(path, threads=_cpu_threads())
            yield from predict(runner, paths, batch_size=batch_size, value_max=value_max, on_error=on_error)
        else:
            yield from _predict_torch(path, paths, batch_size=batch_size, value_max=value_max, device=device,
                                      on_error=on_error)
    except ExportError as exc:  # the runtime's one-line errors, as LeenetError for the CLI
        raise LeenetError(str(exc)) from None


def _cpu_threads() -> int | None:
    """Threads for onnxruntime on the CPU: as many as torch uses, the onnx engine without loading it.

    Torch's count where the caller has torch (it follows ``torch.set_num_threads``), else
    ``OMP_NUM_THREADS`` (onnxruntime's default, every core, spins and runs several times slower
    on a shared machine), else None: onnxruntime's default, one per physical core like torch's.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or None


def _predict_torch(path: Path, paths: Sequence[str | Path], *, batch_size: int, value_max: float | None,
                   device: str | torch.device, on_error: Callable[[str], None]) -> Iterator[dict]:
    import torch  # the torch engine's alone: `leenet predict --engine onnx` runs without it

    from leenet.export.metadata import load_run

    net, prep, class_names = load_run(path, map_location=device)
    costs = net.routed_cost().tolist()
    for batch, files in iter_batches(paths, prep, batch_size=batch_size, value_max=value_max, on_error=on_error):
        with torch.no_grad():
            logits, exit_index = net(torch.from_numpy(batch).to(device))
        yield from make_records(files, logits.float().cpu().numpy(), exit_index.cpu().numpy(),
                                class_names=class_names, exit_names=net.exit_names, costs=costs)
