"""Prometheus metrics of a LEENet server, named as Prometheus and Triton users expect.

Every metric lives in the server's own registry (two servers in one process do not mix), is
prefixed ``leenet_`` and measures time in seconds:

==================================  =========  ====================================================
name                                type       what
==================================  =========  ====================================================
leenet_requests_total               counter    requests by ``route`` and ``outcome`` (success,
                                               client_error, rejected, server_error)
leenet_request_duration_seconds     histogram  arrival to answer, per ``route`` (HTTP handling included)
leenet_queue_duration_seconds       histogram  arrival to the request's first stage
leenet_stage_executions_total       counter    stage runs, per ``stage``
leenet_stage_batch_size             histogram  rows per stage run, per ``stage``
leenet_stage_duration_seconds       histogram  time of one stage run, per ``stage``
leenet_exits_total                  counter    rows answered, per ``exit``
leenet_queue_depth                  gauge      rows waiting, per ``stage``
leenet_audited_total                counter    audited rows, per answering ``exit`` and ``agreed``
leenet_audit_agreement              gauge      share of audited rows (sliding window) whose answer
                                               equals the final exit's
==================================  =========  ====================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from leenet_runtime.scheduler import Answer, Observer

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
OUTCOMES = ("success", "client_error", "rejected", "server_error")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics(Observer):
    """The scheduler's observer, and the app's request counters, in one registry.

    Args:
        stage_names: one name per stage (the export's exit names).
    """

    def __init__(self, stage_names: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self.names = list(stage_names)
        r = self.registry
        self.requests = Counter("leenet_requests", "Requests by route and outcome", ["route", "outcome"], registry=r)
        self.request_seconds = Histogram("leenet_request_duration_seconds", "Arrival to answer", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("leenet_queue_duration_seconds", "Arrival to the first stage",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.stage_runs = Counter("leenet_stage_executions", "Stage runs", ["stage"], registry=r)
        self.batch_size = Histogram("leenet_stage_batch_size", "Rows per stage run", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("leenet_stage_duration_seconds", "Time of one stage run", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.exit_rows = Counter("leenet_exits", "Rows answered per exit", ["exit"], registry=r)
        self.depth = Gauge("leenet_queue_depth", "Rows waiting per stage", ["stage"], registry=r)
        self.audits = Counter("leenet_audited", "Audited rows by answering exit and agreement with the final exit",
                              ["exit", "agreed"], registry=r)
        self.agreement = Gauge("leenet_audit_agreement", "Audited share (sliding window) agreeing with the final exit",
                               registry=r)
        for name in self.names:  # every series exists from the start, at zero
            self.stage_runs.labels(name)
            self.exit_rows.labels(name)
            self.depth.labels(name).set(0)

    def count_request(self, route: str, outcome: str, seconds: float) -> None:
        """One HTTP request finished with ``outcome`` (one of :data:`OUTCOMES`)."""
        self.requests.labels(route, outcome).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # Observer
    def queue_depth(self, stage: int, rows: int) -> None:
        self.depth.labels(self.names[stage]).set(rows)

    def stage_run(self, stage: int, rows: int, seconds: float) -> None:
        name = self.names[stage]
        self.stage_runs.labels(name).inc()
        self.batch_size.labels(name).observe(rows)
        self.stage_seconds.labels(name).observe(seconds)

    def exits(self, exit_index: int, rows: int) -> None:
        self.exit_rows.labels(self.names[exit_index]).inc(rows)

    def request_done(self, answer: Answer) -> None:
        self.queue_seconds.observe(answer.queue_seconds)

    def audited(self, exit_index: int, agreed: bool, agreement: float | None) -> None:
        self.audits.labels(self.names[exit_index], str(agreed).lower()).inc()
        if agreement is not None:
            self.agreement.set(agreement)
