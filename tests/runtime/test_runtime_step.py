"""ExitRunner's step API: a loop over step equals __call__, carries of different batches merge,
and all_exits gives every exit (the routed answer is one of them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leenet import GateConfig, attach_exits
from leenet.export import export_onnx
from leenet_runtime import Carry, ExitRunner

from conftest import EXIT_POINTS, INPUT_SHAPE, make_tiny_cnn, mix_exits_


@pytest.fixture(scope="module", params=[False, True], ids=["no-history", "history"])
def runner(request, tmp_path_factory) -> ExitRunner:
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=5,
                       gate_config=GateConfig(history=request.param)).eval()
    mix_exits_(net, torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1)), 0.5)
    out: Path = tmp_path_factory.mktemp("export") / "tiny"
    export_onnx(net, out)
    return ExitRunner(out, threads=1)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE), dtype=np.float32)


def _stage_by_stage(runner: ExitRunner, carries: list[Carry]) -> dict[int, tuple[int, np.ndarray]]:
    """Route carries stage by stage, merging them before each step: id → (exit, logits)."""
    answers: dict[int, tuple[int, np.ndarray]] = {}
    waiting = carries
    for i in range(runner.num_stages):
        carry = Carry.concat(waiting)
        result = runner.step(i, carry)
        for row in np.flatnonzero(result.leave):
            answers[int(carry.ids[row])] = (i, result.logits[row])
        waiting = [result.rest]
    assert len(waiting[0]) == 0, "rows left after the final stage"
    return answers


def test_merged_carries_route_like_each_batch_alone(runner) -> None:
    a, b = _images(37, 0), _images(20, 1)
    merged = _stage_by_stage(runner, [runner.start(a), runner.start(b, ids=np.arange(100, 120))])
    for images, ids in ((a, range(37)), (b, range(100, 120))):
        logits, exits = runner(images)
        assert set(ids) <= merged.keys()
        for row, key in enumerate(ids):
            assert merged[key][0] == exits[row]
            np.testing.assert_allclose(merged[key][1], logits[row], atol=1e-5)
    assert len(set(np.concatenate([runner(a)[1], runner(b)[1]]))) > 1, "the exits should be mixed"


def test_all_exits_holds_the_routed_answer(runner) -> None:
    x = _images(50, 2)
    logits, exits = runner(x)
    every, exit_prob = runner.all_exits(x)
    assert every.shape == (50, runner.num_stages, 5) and exit_prob.shape == (50, runner.num_stages - 1)
    np.testing.assert_allclose(every[np.arange(50), exits], logits, atol=1e-5)
    # the routed exit is the first whose gate fires (the final exit when none does)
    fires = exit_prob >= runner.threshold
    first = np.where(fires.any(1), fires.argmax(1), runner.num_stages - 1)
    np.testing.assert_array_equal(first, exits)


def test_step_without_routing_keeps_every_row(runner) -> None:
    carry = runner.start(_images(9, 3))
    result = runner.step(0, carry, route=False)
    assert not result.leave.any() and len(result.rest) == 9


def test_start_checks_the_batch(runner) -> None:
    with pytest.raises(Exception, match="expected a batch of shape"):
        runner.start(np.zeros((2, 1, 4, 4), np.float32))
