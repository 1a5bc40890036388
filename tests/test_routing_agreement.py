"""``conftest.assert_routes_like``, the routing check every engine, batch size and thread count is
held to: it lets a tie at the threshold go either way and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leenet.nn.model import ExitOutputs

from conftest import TIE_TOL, assert_routes_like

THRESHOLD = 0.5


def _reference() -> ExitOutputs:
    """Four samples, three exits: sample 0 leaves at 0, 1 at 1, 2 at the final exit, and sample 3
    leaves at 1 with a probability within rounding of the threshold there."""
    logits = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]]).repeat(4, 1, 1)  # exit 1 says class 1
    gate_p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3], [0.2, THRESHOLD + TIE_TOL / 10]])
    return ExitOutputs(logits, gate_p, [])


def _logits_at(reference: ExitOutputs, exits: list[int]) -> np.ndarray:
    return reference.logits[torch.arange(len(exits)), torch.tensor(exits)].numpy()


def test_same_routing_passes() -> None:
    reference = _reference()
    exits = [0, 1, 2, 1]
    np.testing.assert_array_equal(assert_routes_like(reference, THRESHOLD, exits, _logits_at(reference, exits)), exits)


def test_a_tie_may_go_either_way() -> None:
    reference = _reference()
    exits = [0, 1, 2, 2]  # sample 3 rounded its 0.5000 below the threshold
    assert_routes_like(reference, THRESHOLD, exits, _logits_at(reference, exits))


@pytest.mark.parametrize("exits", [[1, 1, 2, 1], [0, 0, 2, 1], [0, 1, 1, 1], [0, 1, 2, 0]],
                         ids=["passed-a-firm-exit", "left-below-threshold", "left-early", "left-before-the-tie"])
def test_a_wrong_exit_away_from_the_threshold_fails(exits: list[int]) -> None:
    reference = _reference()
    with pytest.raises(AssertionError, match="routed differently away from the threshold"):
        assert_routes_like(reference, THRESHOLD, exits, _logits_at(reference, exits))


def test_wrong_logits_or_class_at_the_right_exit_fail() -> None:
    reference = _reference()
    exits = [0, 1, 2, 1]
    logits = _logits_at(reference, exits)
    logits[1] += 1e-3
    with pytest.raises(AssertionError):
        assert_routes_like(reference, THRESHOLD, exits, logits)
    with pytest.raises(AssertionError, match="another class"):
        assert_routes_like(reference, THRESHOLD, exits, np.array([0, 0, 0, 1]))  # sample 1's exit says class 1
