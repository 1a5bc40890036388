"""The exit router: one onnxruntime session per stage graph, the batch compacted between stages.

Routing is a loop over :meth:`ExitRunner.step`: a :class:`Carry` (the rows still running,
row-aligned) goes into stage ``i``; the rows whose gate fires leave with that exit's logits and
the rest go on as the next stage's carry. :meth:`ExitRunner.__call__` runs one batch through
that loop; a server (:mod:`leenet_runtime.serve`) keeps one queue of carries per stage and
merges rows of different requests before each step (:meth:`Carry.concat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def session_options(threads: int | None = None, *, spin: bool = True) -> ort.SessionOptions:
    """onnxruntime options for one stage session.

    Args:
        threads: intra-op threads (default: onnxruntime's choice, every core).
        spin: let idle pool threads spin; turn it off when several sessions share the cores
            (a server's stages), or each session's spinning threads slow the others.
    """
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ExportError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = int(threads)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass(slots=True)
class Carry:
    """Rows that run the next stage together; every array is row-aligned.

    Attributes:
        ids: (N,) int64 the caller's ids of the rows (row numbers of the batch for ``__call__``).
        x: (N, ...) float32 the next stage's input (the images before stage 0, then features).
        prev: (N, i, K) float32 earlier exits' logits, read by gates with history; None before
            the first head.
        raw: (N, i, K) float32 earlier heads' own logits, read by linked exits; None before the
            first head or when the exits are not linked.
    """

    ids: np.ndarray
    x: np.ndarray
    prev: np.ndarray | None = None
    raw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Carry:
        """The carry of ``rows`` (a boolean mask or indices)."""
        return Carry(self.ids[rows], self.x[rows], None if self.prev is None else self.prev[rows],
                     None if self.raw is None else self.raw[rows])

    @staticmethod
    def concat(carries: Sequence[Carry]) -> Carry:
        """One carry of the rows of ``carries``, in order (all waiting at the same stage)."""
        if len(carries) == 1:
            return carries[0]
        first = carries[0]
        return Carry(np.concatenate([c.ids for c in carries]), np.concatenate([c.x for c in carries]),
                     None if first.prev is None else np.concatenate([c.prev for c in carries]),
                     None if first.raw is None else np.concatenate([c.raw for c in carries]))


@dataclass(slots=True)
class StepResult:
    """What one stage did to a carry.

    Attributes:
        leave: (N,) bool the rows that exit here (every row at the final stage).
        logits: (N, K) float32 this exit's logits for every row of the carry; None for a stage
            without a head.
        exit_prob: (N,) float32 the gate's exit probability; None without an enabled gate.
        rest: the carry of the rows that go on to the next stage.
        after: the next stage's carry of every row, the leavers too (a server's audit runs
            some leavers on to the final exit); empty after the final stage.
    """

    leave: np.ndarray
    logits: np.ndarray | None
    exit_prob: np.ndarray | None
    rest: Carry
    after: Carry


class ExitRunner:
    """Route batches through an exported LEENet exactly as ``ExitNet.forward`` does.

    After each stage only the still-active rows go on: the rows whose exit probability
    reaches the threshold are written into the output and dropped from the batch, and the
    next stage graph runs on the rest. Decisions are torch's, in float32, except for a gate
    probability within rounding of the threshold: the logits agree to about 1e-7, but a gate
    can magnify that (up to about 1e-3 on the test suite's random gates), so such a sample may
    take either exit.

    With linked exits (a cascade or an ensemble, ``manifest.linked``) the router also keeps
    the heads' own logits, compacted like the batch, and feeds them to the graphs that read
    them (``raw_logits``): each later head's cascade link and each exit's ensemble.

    Args:
        export_dir: a directory written by ``leenet.export.export_onnx``.
        providers: onnxruntime execution providers, in order of preference (default:
            :func:`default_providers`).
        threads: intra-op threads per session (default: onnxruntime's choice).
        spin: let idle session threads spin (see :func:`session_options`).

    Raises:
        ExportError: the manifest or a graph is missing or altered, a provider is unknown, or
            onnxruntime cannot load a graph (an operator without a kernel, a too-new opset).
    """

    def __init__(self, export_dir: str | Path, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, spin: bool = True) -> None:
        self.export_dir = Path(export_dir)
        self.manifest: Manifest = read_manifest(self.export_dir)
        providers = list(providers) if providers is not None else default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown or not providers:
            raise ExportError(f"execution providers {unknown or providers} are not available in this "
                              f"onnxruntime (available: {', '.join(ort.get_available_providers())})")
        options = session_options(threads, spin=spin)
        self.sessions = [_session(self.export_dir / e.graph, options, providers) for e in self.manifest.exits]
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

    @property
    def num_stages(self) -> int:
        """Stage graphs (= exits; the last is the backbone's own classifier)."""
        return len(self.sessions)

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

    def start(self, batch: np.ndarray, ids: np.ndarray | None = None) -> Carry:
        """The carry that enters stage 0: ``batch`` (N, C, H, W) float32, checked, with ``ids`` (default 0..N-1)."""
        self.check_input(batch)
        ids = np.arange(len(batch), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        return Carry(ids, np.ascontiguousarray(batch))

    def feeds(self, i: int, carry: Carry) -> dict[str, np.ndarray]:
        """The inputs of stage ``i``'s graph for ``carry``: the one rule for what a stage reads."""
        inputs = self.manifest.exits[i].inputs
        feeds = {INPUT: carry.x}
        if PREV_LOGITS in inputs:
            feeds[PREV_LOGITS] = carry.prev
        if RAW_LOGITS in inputs:
            feeds[RAW_LOGITS] = carry.raw
        return feeds

    def step(self, i: int, carry: Carry, *, route: bool = True) -> StepResult:
        """Run stage ``i`` on ``carry``; with ``route`` False nobody leaves before the final exit."""
        entry, last = self.manifest.exits[i], i == len(self.sessions) - 1
        outputs = dict(zip(entry.outputs, self.sessions[i].run(self._outputs[i], self.feeds(i, carry))))
        if last:
            done = carry.take(slice(0, 0))
            return StepResult(np.ones(len(carry), bool), outputs[LOGITS], None, done, done)
        if not entry.head:
            after = Carry(carry.ids, outputs[FEATURES], carry.prev, carry.raw)
            return StepResult(np.zeros(len(carry), bool), None, None, after, after)
        logits = outputs[LOGITS]  # (N, K)
        raw = carry.raw
        if self._linked:  # the head's own logits: the exit's, unless an ensemble combined them
            raw = _append(raw, outputs.get(HEAD_LOGITS, logits))
        prev = _append(carry.prev, logits) if self.manifest.gate_history else carry.prev
        after = Carry(carry.ids, outputs[FEATURES], prev, raw)
        if not entry.enabled:
            return StepResult(np.zeros(len(carry), bool), logits, None, after, after)
        exit_prob = outputs[EXIT_PROB]
        leave = exit_prob >= self.threshold if route else np.zeros(len(carry), bool)
        return StepResult(leave, logits, exit_prob, after.take(~leave) if leave.any() else after, after)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Route each sample of ``batch`` (N, C, H, W) float32 on its own.

        Returns:
            logits (N, K) float32 from each sample's exit, and exit_index (N,) int64 in [0, E).
        """
        carry = self.start(batch)
        n = len(carry)
        exit_index = np.full(n, len(self.sessions) - 1, dtype=np.int64)
        out = np.zeros((n, len(self.manifest.class_names)), np.float32)
        for i in range(len(self.sessions)):
            if len(carry) == 0:  # nothing left to run
                break
            result = self.step(i, carry)
            if result.leave.any():
                rows = carry.ids[result.leave]
                out[rows] = result.logits[result.leave]
                exit_index[rows] = i
            carry = result.rest
        return out, exit_index

    def all_exits(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every exit of every sample, nobody leaving early (for audits and calibration).

        Returns:
            logits (N, E, K) float32, NaN at exits whose head the export does not run, and
            exit_prob (N, E-1) float32, NaN at exits without an enabled gate.
        """
        carry = self.start(batch)
        n, e, k = len(carry), len(self.sessions), len(self.manifest.class_names)
        logits = np.full((n, e, k), np.nan, np.float32)
        exit_prob = np.full((n, e - 1), np.nan, np.float32)
        for i in range(e):
            result = self.step(i, carry, route=False)
            if result.logits is not None:
                logits[:, i] = result.logits
            if result.exit_prob is not None:
                exit_prob[:, i] = result.exit_prob
            carry = result.rest
        return logits, exit_prob

    def routed_cost(self, exit_index: np.ndarray) -> np.ndarray:
        """(N,) relative cost of each sample's exit (1.0 = the plain backbone)."""
        return self.costs[exit_index]


def _append(history: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
    """(N, i, K) history with (N, K) ``logits`` appended as (N, i + 1, K)."""
    return logits[:, None] if history is None else np.concatenate([history, logits[:, None]], axis=1)


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """An onnxruntime session, or one ExportError line naming the graph and onnxruntime's reason."""
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        reason = " ".join(str(exc).split())[:300]
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {path.name} ({reason}): export again with "
                          "this LEENet version, or install the onnxruntime the export was made with") from exc
