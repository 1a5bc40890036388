"""The exit router: one onnxruntime session per stage graph, the batch compacted between stages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from leenet_runtime.manifest import (
    EXIT_PROB,
    FEATURES,
    HEAD_LOGITS,
    INPUT,
    LOGITS,
    PREV_LOGITS,
    RAW_LOGITS,
    ExportError,
    Manifest,
    read_manifest,
)


def default_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, then the CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class ExitRunner:
    """Route batches through an exported LEENet exactly as ``ExitNet.forward`` does.

    After each stage only the still-active rows go on: the rows whose exit probability
    reaches the threshold are written into the output and dropped from the batch, and the
    next stage graph runs on the rest. Decisions are torch's, in float32, except for a gate
    probability within float rounding (about 1e-7) of the threshold.

    With linked exits (a cascade or an ensemble, ``manifest.linked``) the router also keeps
    the heads' own logits, compacted like the batch, and feeds them to the graphs that read
    them (``raw_logits``): each later head's cascade link and each exit's ensemble.

    Args:
        export_dir: a directory written by ``leenet.export.export_onnx``.
        providers: onnxruntime execution providers, in order of preference (default:
            :func:`default_providers`).
        threads: intra-op threads per session (default: onnxruntime's choice).

    Raises:
        ExportError: the manifest or a graph is missing or altered, or a provider is unknown.
    """

    def __init__(self, export_dir: str | Path, *, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        self.export_dir = Path(export_dir)
        self.manifest: Manifest = read_manifest(self.export_dir)
        providers = list(providers) if providers is not None else default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown or not providers:
            raise ExportError(f"execution providers {unknown or providers} are not available in this "
                              f"onnxruntime (available: {', '.join(ort.get_available_providers())})")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ExportError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        self.sessions = [ort.InferenceSession(str(self.export_dir / e.graph), options, providers=providers)
                         for e in self.manifest.exits]
        self.input_shape = tuple(self.manifest.input_shape)
        self.threshold = np.float32(self.manifest.threshold)  # compared in float32, as torch does
        self.costs = np.array([e.cost for e in self.manifest.exits])
        self._outputs = [list(e.outputs) for e in self.manifest.exits]
        self._linked = self.manifest.linked

    @property
    def exit_names(self) -> list[str]:
        return [e.name for e in self.manifest.exits]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    def check_input(self, batch: object) -> None:
        """Refuse, in one line, a batch this network cannot route."""
        if not isinstance(batch, np.ndarray):
            raise ExportError(f"expected a numpy array batch of images, got {type(batch).__name__}")
        if batch.ndim != len(self.input_shape) + 1 or tuple(batch.shape[1:]) != self.input_shape:
            want = ", ".join(str(n) for n in self.input_shape)
            raise ExportError(f"expected a batch of shape (N, {want}), got {tuple(batch.shape)}: preprocess "
                              "the images with leenet_runtime.preprocess (one image needs a batch dimension)")
        if batch.dtype != np.float32:
            raise ExportError(f"the images are {batch.dtype} but the graphs compute in float32: pass "
                              "batch.astype(np.float32), scaled and normalized like the training images")

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Route each sample of ``batch`` (N, C, H, W) float32 on its own.

        Returns:
            logits (N, K) float32 from each sample's exit, and exit_index (N,) int64 in [0, E).
        """
        self.check_input(batch)
        if batch.shape[0] == 1:
            return self._route_one(np.ascontiguousarray(batch))
        n, last = batch.shape[0], len(self.sessions) - 1
        exit_index = np.full(n, last, dtype=np.int64)
        if n == 0:
            return np.zeros((0, len(self.manifest.class_names)), np.float32), exit_index
        active = np.arange(n)  # rows of the batch still running
        out: np.ndarray | None = None
        prev: np.ndarray | None = None  # (N_active, i, K) earlier exits' logits, for gate history
        raw: np.ndarray | None = None  # (N_active, i, K) earlier heads' own logits, for linked exits
        h = np.ascontiguousarray(batch)
        for i, (entry, session) in enumerate(zip(self.manifest.exits, self.sessions)):
            feeds = {INPUT: h}
            if PREV_LOGITS in entry.inputs:
                feeds[PREV_LOGITS] = prev
            if RAW_LOGITS in entry.inputs:
                feeds[RAW_LOGITS] = raw
            outputs = dict(zip(entry.outputs, session.run(list(entry.outputs), feeds)))
            if i == last:
                if out is None or active.size == n:  # nobody left early: the final logits are the output
                    return outputs[LOGITS], exit_index
                out[active] = outputs[LOGITS]
                break
            h = outputs[FEATURES]
            if not entry.head:
                continue
            logits = outputs[LOGITS]  # (N_active, K)
            if out is None:
                out = np.empty((n, logits.shape[-1]), logits.dtype)
                prev = np.empty((n, 0, logits.shape[-1]), logits.dtype)
            if self._linked:  # the head's own logits: the exit's, unless an ensemble combined them
                head = outputs.get(HEAD_LOGITS, logits)
                raw = head[:, None] if raw is None else np.concatenate([raw, head[:, None]], axis=1)
            if entry.enabled:
                leave = outputs[EXIT_PROB] >= self.threshold  # (N_active,)
                out[active[leave]] = logits[leave]
                exit_index[active[leave]] = i
                stay = ~leave
                active, h, logits, prev = active[stay], h[stay], logits[stay], prev[stay]
                raw = None if raw is None else raw[stay]
            if self.manifest.gate_history:
                prev = np.concatenate([prev, logits[:, None]], axis=1)
            if active.size == 0:  # nothing left to run
                break
        return out, exit_index

    def _route_one(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image: a yes/no per exit and nothing to compact (the batch-1 path)."""
        last, prev, raw = len(self.sessions) - 1, None, None
        for i, (entry, session, names) in enumerate(zip(self.manifest.exits, self.sessions, self._outputs)):
            feeds = {INPUT: h} if PREV_LOGITS not in entry.inputs else {INPUT: h, PREV_LOGITS: prev}
            if RAW_LOGITS in entry.inputs:
                feeds[RAW_LOGITS] = raw
            outs = session.run(names, feeds)
            if i == last:
                return outs[0], np.full(1, last, dtype=np.int64)
            h = outs[0]
            if not entry.head:
                continue
            logits = outs[1]  # then exit_prob (an enabled gate), then head_logits (an ensemble)
            if self._linked:
                head = outs[-1] if names[-1] == HEAD_LOGITS else logits
                raw = head[:, None] if raw is None else np.concatenate([raw, head[:, None]], axis=1)
            if entry.enabled and outs[2][0] >= self.threshold:
                return logits, np.full(1, i, dtype=np.int64)
            if self.manifest.gate_history:
                prev = logits[:, None] if prev is None else np.concatenate([prev, logits[:, None]], axis=1)
        raise AssertionError("the last stage always returns")

    def routed_cost(self, exit_index: np.ndarray) -> np.ndarray:
        """(N,) relative cost of each sample's exit (1.0 = the plain backbone)."""
        return self.costs[exit_index]
