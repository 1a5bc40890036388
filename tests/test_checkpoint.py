"""Tests for leenet.checkpoint: round trips, the version-1 migration, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leenet import CheckpointError, GateConfig, attach_exits, load_checkpoint, save_checkpoint
from leenet.checkpoint import read_checkpoint

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, make_tiny_cnn, mix_exits_


def _saved(tmp_path: Path, tiny_input: torch.Tensor) -> tuple[Path, torch.nn.Module]:
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       gate_config=GateConfig(history=True))
    mix_exits_(net, tiny_input, 0.5)
    spec = {"arch": "tiny", "exits": EXIT_POINTS, "num_classes": NUM_CLASSES, "input_shape": list(INPUT_SHAPE),
            "head": "pool", "gate": {"hidden": 16, "history": True, "pooled": False, "classes": False},
            "threshold": 0.5}
    return save_checkpoint(tmp_path / "model.pt", net, spec, gate_bank={0.5: net.gates}), net


def test_round_trip_routes_the_same(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    path, net = _saved(tmp_path, tiny_input)
    again = load_checkpoint(path, backbone=make_tiny_cnn(seed=7))
    logits, exits = net(tiny_input)
    logits2, exits2 = again(tiny_input)
    assert torch.equal(exits, exits2) and torch.allclose(logits, logits2)
    assert read_checkpoint(path)["version"] == 2


def test_version_1_files_are_migrated(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    """Version 1 files predate the gates' enabled flags and the head/gate costs: they load as
    they ran then (every gate on, nothing skippable), through an explicit migration."""
    path, net = _saved(tmp_path, tiny_input)
    payload = torch.load(path, weights_only=True)
    drop = ("enabled", "head_cost", "gate_cost")
    payload["version"] = 1
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.endswith(drop)}
    payload["gate_bank"] = {a: {k: v for k, v in g.items() if not k.endswith(drop)}
                            for a, g in payload["gate_bank"].items()}
    torch.save(payload, tmp_path / "v1.pt")
    old = load_checkpoint(tmp_path / "v1.pt", backbone=make_tiny_cnn())
    assert old.enabled_exits().all() and not old.head_cost.any() and not old.gate_cost.any()
    assert torch.equal(old(tiny_input)[1], net(tiny_input)[1])
    assert load_checkpoint(tmp_path / "v1.pt", backbone=make_tiny_cnn(), alpha=0.5).enabled_exits().all()


def test_other_versions_are_refused_in_one_line(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    path, _ = _saved(tmp_path, tiny_input)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="version 99") as info:
        load_checkpoint(tmp_path / "v99.pt", backbone=make_tiny_cnn())
    assert "\n" not in str(info.value)
