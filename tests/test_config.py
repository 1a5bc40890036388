"""Tests for leenet.config: every setting validated on construction, in one line that names the fix."""

from __future__ import annotations

import pytest

from leenet import DataConfig, GateConfig, GateTrainConfig, LeenetError, ModelConfig, RunConfig, TrainConfig
from leenet.config import check_alpha, check_margin, parse_alphas


@pytest.mark.parametrize("make, match", [
    (lambda: GateConfig(hidden=-1), "hidden width"),
    (lambda: GateConfig(hidden=10**6), "wider than a gate needs"),
    (lambda: GateTrainConfig(loss="hinge"), "unknown exit loss"),
    (lambda: GateTrainConfig(objective="magic"), "unknown gate objective"),
    (lambda: ModelConfig(head="mlp"), "unknown head"),
    (lambda: DataConfig(calib_size=float("nan")), "--calib-size"),
    (lambda: TrainConfig(lr=float("inf")), "--lr"),
    (lambda: TrainConfig(precision="fp16"), "--precision"),
    (lambda: RunConfig(alphas=()), "--alphas is empty"),
    (lambda: RunConfig(target_cost=0.5, max_drop=0.01), "one budget"),
    (lambda: RunConfig(device="tpu"), "unknown device"),
    (lambda: RunConfig(train=TrainConfig(epochs=0)), "--epochs 0"),
])
def test_bad_settings_are_refused_in_one_line(make, match) -> None:
    with pytest.raises(LeenetError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_the_chosen_alpha_is_always_swept() -> None:
    config = RunConfig(alphas=(0.5, 0.1), alpha=0.33)
    assert config.alphas == (0.1, 0.33, 0.5)


def test_parse_alphas_reads_lists_and_ranges() -> None:
    assert parse_alphas("0,0.5,1") == (0.0, 0.5, 1.0)
    assert parse_alphas("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    for bad in ("0:2:0.5", "a,b", "0:1:0"):
        with pytest.raises(LeenetError):
            parse_alphas(bad)


def test_alpha_and_margin_checks() -> None:
    assert check_alpha("0.25") == 0.25 and check_margin(0.0) == 0.0
    for bad in (-0.1, 1.5, float("nan"), None):
        with pytest.raises(LeenetError, match="alpha must be in"):
            check_alpha(bad)
    with pytest.raises(LeenetError, match="--budget-margin"):
        check_margin(float("inf"))
