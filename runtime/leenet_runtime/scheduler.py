"""Batching built for early exits: a queue per stage, and rows of different requests merged before each stage.

Route whole batches and a batch loses its easy rows after the first stage, so the deep stages,
where most of the time goes, run small batches while new requests wait. The
:class:`Scheduler` instead keeps one queue of rows per stage. After a stage, the rows that
leave are answered at once and the others join the next stage's queue, where they wait, up to
``max_delay_ms``, for rows of later requests, so deep stages run fuller batches (``mode
"stage"``). ``mode "request"`` routes each batch of requests through every stage together, as
:class:`~leenet_runtime.runner.ExitRunner` does, for comparison.

One executor thread runs the stages, one at a time, so the stage sessions share one thread
budget instead of fighting over the cores. Which queue runs next:

* stage 0 (new requests) runs whatever has arrived, up to ``max_batch`` rows, when no deeper
  queue is ready: requests that arrive while a stage runs are batched together;
* a deeper queue is ready when it holds ``max_batch`` rows, when its oldest row has waited
  ``max_delay_ms``, or when every queue before it is empty (no more rows can come soon);
* the deepest ready queue runs first, so a request is finished before new work starts.

An online audit (``audit_rate``) runs a sampled share of the answered rows on to the final
exit, after their answer is sent, and keeps how often the answering exit agreed with the final
exit over a sliding window: the live price of exiting early.

The scheduler knows nothing of HTTP (:mod:`leenet_runtime.app`) or Prometheus
(:mod:`leenet_runtime.metrics`); it reports to an :class:`Observer`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from leenet_runtime.manifest import ExportError
from leenet_runtime.runner import Carry, ExitRunner

MODES = ("stage", "request")
ROW_BITS = 20  # a row's id is (request sequence << ROW_BITS) | row, so a request holds < 2**20 rows
ROW_MASK = (1 << ROW_BITS) - 1
AUDIT_BIT = 1 << 62  # ids at or above it are audit rows: run on to the final exit, answered to nobody
log = logging.getLogger("leenet_runtime.serve")


@dataclass(frozen=True)
class BatchingConfig:
    """How the server batches; defaults suit a small CPU model (see docs/serve.md for measurements)."""

    mode: str = "stage"  # "stage": a queue per stage, rows of different requests merged; "request": whole batches
    max_batch: int = 64  # most rows one stage runs at once
    max_delay_ms: float = 2.0  # longest a row waits at a deeper stage for more rows while earlier stages have work
    max_queue: int = 1024  # rows waiting in all queues; a request beyond it is refused (503, Retry-After)
    audit_rate: float = 0.0  # share of answered rows also run to the final exit, to measure agreement
    audit_window: int = 1000  # the agreement is over the last this many audited rows
    seed: int = 0  # the audit's sampling

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExportError(f"batching mode {self.mode!r} unknown: use one of {', '.join(MODES)}")
        if self.max_batch < 1 or self.max_queue < 1 or self.audit_window < 1:
            raise ExportError(f"max batch ({self.max_batch}), max queue ({self.max_queue}) and audit window "
                              f"({self.audit_window}) must be at least 1")
        if not (self.max_delay_ms >= 0 and math.isfinite(self.max_delay_ms)):
            raise ExportError(f"max delay must be a finite number of milliseconds >= 0, got {self.max_delay_ms}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ExportError(f"audit rate must be a share in [0, 1], got {self.audit_rate}")


class Overloaded(RuntimeError):
    """The queues are full (or the server is stopping): answer 503 and ask to retry later."""

    retry_after_s = 1


@dataclass
class Answer:
    """A finished request: the rows' routed ``logits`` (N, K), ``exit_index`` (N,), and times in seconds."""

    logits: np.ndarray
    exit_index: np.ndarray
    queue_seconds: float  # from arrival to its first stage
    seconds: float  # from arrival to the last row's answer
    error: BaseException | None = None  # set when running the stages failed


class Observer:
    """What the scheduler reports; the base class ignores everything (metrics subclass it)."""

    def queue_depth(self, stage: int, rows: int) -> None:
        """Rows now waiting at ``stage``."""

    def stage_run(self, stage: int, rows: int, seconds: float) -> None:
        """One execution of ``stage`` on ``rows`` rows."""

    def exits(self, exit_index: int, rows: int) -> None:
        """``rows`` answered at ``exit_index``."""

    def request_done(self, answer: Answer) -> None:
        """A request answered (or failed)."""

    def audited(self, exit_index: int, agreed: bool, agreement: float | None) -> None:
        """An audited row: its exit, whether it agreed with the final exit, the window's agreement."""


class _Request:
    __slots__ = ("n", "logits", "exit_index", "left", "arrival", "started", "done")

    def __init__(self, n: int, num_classes: int, done: Callable[[Answer], None], arrival: float) -> None:
        self.n, self.left, self.done, self.arrival, self.started = n, n, done, arrival, None
        self.logits = np.zeros((n, num_classes), np.float32)
        self.exit_index = np.zeros(n, np.int64)


class _Queue:
    """Rows waiting for one stage: carries in arrival order, with the time each arrived."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[Carry, float]] = deque()
        self.rows = 0

    def push(self, carry: Carry, now: float) -> None:
        if len(carry):
            self.chunks.append((carry, now))
            self.rows += len(carry)

    def oldest(self) -> float:
        return self.chunks[0][1]

    def pop(self, limit: int, whole: bool = False) -> Carry:
        """Up to ``limit`` rows, oldest first; with ``whole`` no carry is split (one alone may exceed it)."""
        taken, count = [], 0
        while self.chunks and count < limit:
            carry, t = self.chunks[0]
            if count + len(carry) <= limit or (whole and not taken):
                taken.append(self.chunks.popleft()[0])
                count += len(carry)
            elif whole:
                break
            else:
                k = limit - count
                taken.append(carry.take(slice(0, k)))
                self.chunks[0] = (carry.take(slice(k, None)), t)
                count = limit
        self.rows -= count
        return Carry.concat(taken)


class Scheduler:
    """Serve an :class:`ExitRunner` to many concurrent callers with exit-aware batching.

    Args:
        runner: the exported network.
        config: batching settings.
        observer: receives queue depths, stage runs, exits, answers and audits.

    Use :meth:`start` and :meth:`stop` (or ``with Scheduler(...) as s:``), then :meth:`submit`
    from any thread, :meth:`classify` from asyncio, or call it: ``logits, exits = s(batch)``.
    """

    def __init__(self, runner: ExitRunner, config: BatchingConfig = BatchingConfig(),
                 observer: Observer | None = None) -> None:
        self.runner, self.config = runner, config
        self.observer = observer or Observer()
        self._queues = [_Queue() for _ in range(runner.num_stages)]
        self._requests: dict[int, _Request] = {}
        self._audits: dict[int, tuple[int, int]] = {}  # audit row id → (answered class, answering exit)
        self._window: deque[bool] = deque(maxlen=config.audit_window)
        self._audited = 0
        self._rng = np.random.default_rng(config.seed)
        self._seq = self._audit_seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._num_classes = len(runner.class_names)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> Scheduler:
        """Start the executor thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="leenet-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new requests, answer every request already taken, then end the executor thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    # -- callers ----------------------------------------------------------------------------
    def submit(self, batch: np.ndarray, done: Callable[[Answer], None]) -> None:
        """Queue ``batch`` (N, C, H, W) float32; ``done(answer)`` is called from the executor thread.

        Raises:
            ExportError: the batch has the wrong shape or dtype, or too many rows.
            Overloaded: the queues hold ``max_queue`` rows, or the server is stopping.
        """
        self.runner.check_input(batch)
        n = len(batch)
        if not 0 < n <= ROW_MASK:
            raise ExportError(f"a request needs between 1 and {ROW_MASK} images, got {n}")
        with self._cond:
            waiting = self._waiting_rows()
            if self._stopping or self._thread is None:
                raise Overloaded("the server is stopping: retry on another replica")
            if waiting and waiting + n > self.config.max_queue:
                raise Overloaded(f"{waiting} rows are queued (limit {self.config.max_queue}): retry later")
            seq, self._seq = self._seq, self._seq + 1
            now = time.monotonic()
            self._requests[seq] = _Request(n, self._num_classes, done, now)
            ids = (np.int64(seq) << ROW_BITS) | np.arange(n, dtype=np.int64)
            self._queues[0].push(Carry(ids, np.ascontiguousarray(batch)), now)
            self.observer.queue_depth(0, self._queues[0].rows)
            self._cond.notify()

    async def classify(self, batch: np.ndarray) -> Answer:
        """Queue ``batch`` and await its :class:`Answer` (raises as :meth:`submit`)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(answer: Answer) -> None:
            loop.call_soon_threadsafe(_resolve, future, answer)

        self.submit(batch, done)
        return await future

    def __call__(self, batch: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Blocking: queue ``batch`` and return its (logits (N, K), exit_index (N,))."""
        finished = threading.Event()
        box: list[Answer] = []
        self.submit(batch, lambda answer: (box.append(answer), finished.set()))
        if not finished.wait(timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        if box[0].error is not None:
            raise box[0].error
        return box[0].logits, box[0].exit_index

    def status(self) -> dict:
        """Queue depths and the audit's agreement, as JSON-ready values."""
        with self._cond:
            return {"mode": self.config.mode, "queue_depth": [q.rows for q in self._queues],
                    "requests_in_flight": len(self._requests),
                    "audit": {"rate": self.config.audit_rate, "window": self.config.audit_window,
                              "audited": self._audited, "in_window": len(self._window),
                              "agreement": self._agreement(), "pending": len(self._audits)}}

    # -- the executor -----------------------------------------------------------------------
    def _waiting_rows(self) -> int:
        return sum(q.rows for q in self._queues)

    def _agreement(self) -> float | None:
        return sum(self._window) / len(self._window) if self._window else None

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
                while job is None:
                    if self._stopping and not self._waiting_rows():
                        return
                    self._cond.wait(self._wait_seconds())
                    job = self._next_job()
            stage, carry = job
            try:
                if self.config.mode == "stage":
                    self._run_stage(stage, carry)
                else:
                    self._run_request_batch(carry)
            except Exception as exc:  # a failing graph must not stop the server: fail these rows, keep serving
                log.exception("running stage %d on %d rows failed", stage, len(carry))
                self._fail(carry, exc)

    def _next_job(self) -> tuple[int, Carry] | None:
        """The queue to run now (under the lock), or None to wait."""
        queues, limit = self._queues, self.config.max_batch
        if self.config.mode == "request":
            return (0, self._take(0, whole=True)) if queues[0].rows else None
        now, delay = time.monotonic(), self.config.max_delay_ms / 1000
        ready, upstream_empty = None, True
        for k, q in enumerate(queues):
            if q.rows and (k == 0 or upstream_empty or self._stopping or q.rows >= limit or now - q.oldest() >= delay):
                ready = k  # the deepest ready queue wins
            upstream_empty = upstream_empty and not q.rows
        return None if ready is None else (ready, self._take(ready))

    def _take(self, stage: int, whole: bool = False) -> Carry:
        carry = self._queues[stage].pop(self.config.max_batch, whole)
        self.observer.queue_depth(stage, self._queues[stage].rows)
        if stage == 0:
            now = time.monotonic()
            for seq in np.unique(carry.ids[carry.ids < AUDIT_BIT] >> ROW_BITS).tolist():
                request = self._requests[seq]
                if request.started is None:
                    request.started = now
        return carry

    def _wait_seconds(self) -> float | None:
        """How long nothing can become ready (None: until notified)."""
        times = [q.oldest() for q in self._queues[1:] if q.rows]
        if not times:
            return None
        return max(0.0, min(times) + self.config.max_delay_ms / 1000 - time.monotonic())

    def _run_stage(self, stage: int, carry: Carry) -> None:
        """One stage on merged rows; leavers answered, the rest queued for the next stage."""
        rest = self._step(stage, carry)
        if len(rest):
            with self._cond:
                self._queues[stage + 1].push(rest, time.monotonic())
                self.observer.queue_depth(stage + 1, self._queues[stage + 1].rows)

    def _run_request_batch(self, carry: Carry) -> None:
        """Request-level batching: the batch routed through every stage together, as ExitRunner does."""
        for stage in range(self.runner.num_stages):
            if not len(carry):
                return
            carry = self._step(stage, carry)

    def _step(self, stage: int, carry: Carry) -> Carry:
        """Run ``stage``, answer and audit its leavers; return the rows that go on."""
        start = time.monotonic()
        result = self.runner.step(stage, carry)
        self.observer.stage_run(stage, len(carry), time.monotonic() - start)
        last = stage == self.runner.num_stages - 1
        audit = carry.ids >= AUDIT_BIT
        has_audit = bool(audit.any())
        leave = result.leave & ~audit if has_audit else result.leave
        rest = result.after.take(~leave) if has_audit and not last else result.rest
        if self.config.audit_rate and leave.any():
            rest = self._open_audits(stage, leave, result, rest)
        if has_audit and last:
            self._close_audits(carry.ids[audit], result.logits[audit])
        finished = self._answer(stage, carry.ids[leave], result.logits[leave]) if leave.any() else []
        for request in finished:
            request.done(self._answer_of(request))
        return rest

    def _answer(self, stage: int, ids: np.ndarray, logits: np.ndarray) -> list[_Request]:
        """Write the leavers' answers into their requests; return the requests now complete."""
        seqs, rows = ids >> ROW_BITS, ids & ROW_MASK
        self.observer.exits(stage, len(ids))
        finished = []
        with self._cond:
            for seq in np.unique(seqs).tolist():
                mine = seqs == seq
                request = self._requests[seq]
                request.logits[rows[mine]] = logits[mine]
                request.exit_index[rows[mine]] = stage
                request.left -= int(mine.sum())
                if request.left == 0:
                    finished.append(self._requests.pop(seq))
        return finished

    def _answer_of(self, request: _Request, error: BaseException | None = None) -> Answer:
        now = time.monotonic()
        started = request.started if request.started is not None else now
        answer = Answer(request.logits, request.exit_index, started - request.arrival, now - request.arrival, error)
        self.observer.request_done(answer)
        return answer

    def _open_audits(self, stage: int, leave: np.ndarray, result, rest: Carry) -> Carry:
        """Sample answered rows; those that left early go on to the final exit as audit rows."""
        sampled = np.flatnonzero(leave)[self._rng.random(int(leave.sum())) < self.config.audit_rate]
        if not sampled.size:
            return rest
        answered = result.logits[sampled].argmax(1)
        if stage == self.runner.num_stages - 1:  # answered by the final exit: agrees with itself
            self._record_audits(stage, [True] * sampled.size)
            return rest
        with self._cond:
            ids = AUDIT_BIT + self._audit_seq + np.arange(sampled.size, dtype=np.int64)
            self._audit_seq += sampled.size
            for i, k in zip(ids.tolist(), answered.tolist()):
                self._audits[i] = (k, stage)
        audit = result.after.take(sampled)
        return Carry.concat([rest, Carry(ids, audit.x, audit.prev, audit.raw)])

    def _close_audits(self, ids: np.ndarray, logits: np.ndarray) -> None:
        final = logits.argmax(1)
        with self._cond:
            opened = [self._audits.pop(i) for i in ids.tolist()]
        for (answered, stage), k in zip(opened, final.tolist()):
            self._record_audits(stage, [answered == k])

    def _record_audits(self, stage: int, agreed: list[bool]) -> None:
        with self._cond:
            self._window.extend(agreed)
            self._audited += len(agreed)
            agreement = self._agreement()
        for a in agreed:
            self.observer.audited(stage, a, agreement)

    def _fail(self, carry: Carry, error: BaseException) -> None:
        """Fail every request with a row in ``carry``, dropping its other rows where they wait."""
        seqs = np.unique(carry.ids[carry.ids < AUDIT_BIT] >> ROW_BITS)
        with self._cond:
            failed = [self._requests.pop(s) for s in seqs.tolist() if s in self._requests]
            for q in self._queues:
                chunks = [(c.take(~np.isin(c.ids >> ROW_BITS, seqs) | (c.ids >= AUDIT_BIT)), t) for c, t in q.chunks]
                q.chunks = deque((c, t) for c, t in chunks if len(c))
                q.rows = sum(len(c) for c, _ in q.chunks)
            for i in carry.ids[carry.ids >= AUDIT_BIT].tolist():
                self._audits.pop(i, None)
        for request in failed:
            request.done(self._answer_of(request, error))


def _resolve(future: asyncio.Future, answer: Answer) -> None:
    if not future.done():
        future.set_result(answer)
