"""The server's scheduler without HTTP: every answer is ExitRunner's on that image alone, in both
batching modes, under concurrent callers; rows of different requests merge at deep stages; the
audit measures the true agreement; full queues refuse, a stop drains, a failing stage fails only
its requests."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from leenet_runtime import ExitRunner, ExportError
from leenet_runtime.scheduler import BatchingConfig, Observer, Overloaded, Scheduler

from serve_fixtures import assert_same_answers, images, make_export


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> ExitRunner:
    return ExitRunner(make_export(tmp_path_factory.mktemp("serve") / "tiny"), threads=1)


class Recorder(Observer):
    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def stage_run(self, stage: int, rows: int, seconds: float) -> None:
        self.runs.append((stage, rows))


def _serve_concurrently(scheduler: Scheduler, x: np.ndarray, clients: int = 6) -> list:
    """Each image its own request, from ``clients`` threads; returns (logits, exits) per image."""
    out: list = [None] * len(x)

    def client(k: int) -> None:
        for i in range(k, len(x), clients):
            out[i] = scheduler(x[i:i + 1], timeout=30)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("mode", ["stage", "request"])
def test_answers_equal_the_runner_on_each_image_alone(runner, mode) -> None:
    x = images(120, seed=3)
    with Scheduler(runner, BatchingConfig(mode=mode, max_batch=16, max_delay_ms=1)) as scheduler:
        served = _serve_concurrently(scheduler, x)
        several = scheduler(x[:37], timeout=30)  # one request of many rows
    assert_same_answers(runner, x, np.concatenate([s[0] for s in served]), np.concatenate([s[1] for s in served]))
    assert_same_answers(runner, x[:37], *several)
    assert len(set(runner(x)[1].tolist())) == runner.num_stages, "exits should be mixed"


def _blocking_first_step(runner: ExitRunner, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make the first stage run wait for ``release``; ``entered`` is set when it starts."""
    entered, release, step = threading.Event(), threading.Event(), runner.step

    def blocked(i, carry, **kw):
        if not release.is_set():
            entered.set()
            assert release.wait(30)
        return step(i, carry, **kw)

    monkeypatch.setattr(runner, "step", blocked)
    return entered, release


def test_rows_of_different_requests_merge_at_deep_stages(runner, monkeypatch) -> None:
    x = images(64, seed=4)
    recorder = Recorder()
    entered, release = _blocking_first_step(runner, monkeypatch)
    with Scheduler(runner, BatchingConfig(max_batch=64, max_delay_ms=50), recorder) as scheduler:
        results: list = [None] * 64
        first = threading.Thread(target=lambda: results.__setitem__(0, scheduler(x[:1], timeout=30)))
        first.start()
        assert entered.wait(30)
        waiting = [threading.Thread(target=lambda i=i: results.__setitem__(i, scheduler(x[i:i + 1], timeout=30)))
                   for i in range(1, 64)]
        for t in waiting:
            t.start()
        while scheduler.status()["queue_depth"][0] < 63:  # every request queued behind the blocked stage
            threading.Event().wait(0.005)
        release.set()
        for t in [first, *waiting]:
            t.join()
    deep = [rows for stage, rows in recorder.runs if stage > 0]
    assert max(deep) > 1, f"deep stages ran one row at a time: {recorder.runs}"
    assert_same_answers(runner, x, np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))


def test_max_batch_bounds_every_stage_run(runner) -> None:
    recorder = Recorder()
    with Scheduler(runner, BatchingConfig(max_batch=8), recorder) as scheduler:
        logits, exits = scheduler(images(50, seed=5), timeout=30)
    assert max(rows for _, rows in recorder.runs) <= 8
    assert_same_answers(runner, images(50, seed=5), logits, exits)


def test_audit_at_rate_one_is_the_true_agreement(runner) -> None:
    x = images(200, seed=6)
    routed, exits = runner(x)
    every, _ = runner.all_exits(x)
    truth = float((routed.argmax(1) == every[:, -1].argmax(1)).mean())
    assert 0 < truth < 1
    with Scheduler(runner, BatchingConfig(audit_rate=1.0, audit_window=1000)) as scheduler:
        _serve_concurrently(scheduler, x, clients=4)
        for _ in range(1000):  # audit rows finish after their answers
            if scheduler.status()["audit"]["audited"] == len(x):
                break
            threading.Event().wait(0.01)
        audit = scheduler.status()["audit"]
    assert audit["audited"] == len(x) and audit["pending"] == 0
    assert audit["agreement"] == pytest.approx(truth, abs=1e-9)


def test_full_queues_refuse_and_recover(runner, monkeypatch) -> None:
    entered, release = _blocking_first_step(runner, monkeypatch)
    with Scheduler(runner, BatchingConfig(max_queue=4)) as scheduler:
        done = threading.Event()
        scheduler.submit(images(1), lambda answer: None)
        assert entered.wait(30)
        scheduler.submit(images(4, seed=1), lambda answer: done.set())
        with pytest.raises(Overloaded, match="retry later"):
            scheduler.submit(images(1, seed=2), lambda answer: None)
        release.set()
        assert done.wait(30)
        logits, _ = scheduler(images(1, seed=2), timeout=30)  # serving again
    assert logits.shape == (1, 5)


def test_stop_answers_everything_taken_then_refuses(runner) -> None:
    scheduler = Scheduler(runner, BatchingConfig(max_delay_ms=20)).start()
    answers: list = []
    for i in range(30):
        scheduler.submit(images(3, seed=i), answers.append)
    scheduler.stop()
    assert len(answers) == 30 and all(a.error is None for a in answers)
    with pytest.raises(Overloaded, match="stopping"):
        scheduler.submit(images(1), answers.append)


def test_a_failing_stage_fails_only_its_requests(runner, monkeypatch) -> None:
    step, calls = runner.step, []

    def flaky(i, carry, **kw):
        calls.append(i)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return step(i, carry, **kw)

    monkeypatch.setattr(runner, "step", flaky)
    with Scheduler(runner) as scheduler:
        with pytest.raises(RuntimeError, match="boom"):
            scheduler(images(2), timeout=30)
        logits, exits = scheduler(images(2, seed=9), timeout=30)
    assert logits.shape == (2, 5) and exits.shape == (2,)


@pytest.mark.parametrize("bad", [dict(mode="batch"), dict(max_batch=0), dict(max_delay_ms=-1),
                                 dict(audit_rate=1.5), dict(max_queue=0)])
def test_bad_settings_are_one_line_errors(bad) -> None:
    with pytest.raises(ExportError) as err:
        BatchingConfig(**bad)
    assert "\n" not in str(err.value)


def test_a_wrong_batch_is_refused_before_queueing(runner) -> None:
    with Scheduler(runner) as scheduler:
        with pytest.raises(ExportError, match="expected a batch of shape"):
            scheduler.submit(np.zeros((1, 1, 16, 16), np.float32), lambda answer: None)
        assert scheduler.status()["queue_depth"][0] == 0
