"""Tests for leenet.checkpoint: round trips, the version-1 migration, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leenet import (
    CheckpointError,
    ExitEnsemble,
    GateConfig,
    attach_exits,
    build_backbone,
    get_backbone_info,
    load_checkpoint,
    save_checkpoint,
)
from leenet.checkpoint import read_checkpoint

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, explicit_stages, make_tiny_cnn, mix_exits_


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
    assert read_checkpoint(path)["version"] == 4


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


@pytest.mark.parametrize("head", ["sdn", "deep"])
def test_the_network_alone_is_enough_to_save_a_registry_backbone(tmp_path: Path, head: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("digits_cnn", num_classes=10, in_channels=1)
    net = attach_exits(backbone, list(get_backbone_info("digits_cnn").default_exits), input_shape=(1, 8, 8),
                       num_classes=10, head=head)
    x = torch.randn(16, 1, 8, 8)
    mix_exits_(net, x, 0.5)
    save_checkpoint(tmp_path / "model.pt", net)
    spec = read_checkpoint(tmp_path / "model.pt")["spec"]
    assert spec["arch"] == "digits_cnn" and spec["head"] == head and spec["layouts"] == [["nchw", 0]] * 2
    again = load_checkpoint(tmp_path / "model.pt")
    assert all(type(h) is type(g) and h.kind == head for h, g in zip(again.heads, net.heads))  # same head class
    assert all(torch.equal(a, b) for a, b in zip(net(x), again(x)))
    before, after = net.eval().forward_all(x), again.eval().forward_all(x)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.gate_p, after.gate_p)


def test_explicit_stages_save_and_load_with_the_same_stages(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    net = attach_exits(explicit_stages(make_tiny_cnn()), ["a", "b", "c"], input_shape=INPUT_SHAPE,
                       num_classes=NUM_CLASSES)
    mix_exits_(net, tiny_input, 0.5)
    path = save_checkpoint(tmp_path / "model.pt", net)
    assert read_checkpoint(path)["backbone_state"] is None  # hand-cut stages reuse names: no plain state dict
    with pytest.raises(CheckpointError, match="pass it again as load_checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    again = load_checkpoint(path, backbone=explicit_stages(make_tiny_cnn(seed=3)))
    assert again.exit_names == ["a", "b", "c", "final"]
    assert all(torch.equal(a, b) for a, b in zip(net(tiny_input), again(tiny_input)))


def test_version_2_files_are_migrated(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    """Version 2 files have no layouts: they are detected again on load, as version 2 did."""
    path, net = _saved(tmp_path, tiny_input)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 2
    del payload["spec"]["layouts"]
    torch.save(payload, tmp_path / "v2.pt")
    assert read_checkpoint(tmp_path / "v2.pt")["spec"]["layouts"] is None
    old = load_checkpoint(tmp_path / "v2.pt", backbone=make_tiny_cnn())
    assert torch.equal(old(tiny_input)[1], net(tiny_input)[1])


def test_version_3_files_are_migrated(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    """Version 3 files predate cascades and ensembles: they load as plain heads, no ensemble."""
    path, net = _saved(tmp_path, tiny_input)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 3
    del payload["spec"]["cascade"], payload["spec"]["ensemble"]
    torch.save(payload, tmp_path / "v3.pt")
    spec = read_checkpoint(tmp_path / "v3.pt")["spec"]
    assert spec["cascade"] == "off" and spec["ensemble"] is None
    old = load_checkpoint(tmp_path / "v3.pt", backbone=make_tiny_cnn())
    assert old.cascade is None and old.ensemble is None
    assert torch.equal(old(tiny_input)[1], net(tiny_input)[1])


def test_cascade_and_ensemble_round_trip(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    net = attach_exits(explicit_stages(make_tiny_cnn()), input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       gate_config=GateConfig(hidden=8), cascade="grad")
    gen = torch.Generator().manual_seed(3)
    for link in net.cascade.links:
        link.weight.data = torch.randn(link.weight.shape, generator=gen)
    ensemble = ExitEnsemble(net.num_exits, NUM_CLASSES, "linear", final=True)
    ensemble.weight.copy_((torch.randn(ensemble.weight.shape, generator=gen) * 0.3 + torch.eye(net.num_exits)).tril())
    ensemble.bias.copy_(torch.randn(ensemble.bias.shape, generator=gen) * 0.3)
    net.set_ensemble(ensemble)
    mix_exits_(net.eval(), tiny_input, 0.5)  # (eval first: mixing on batch statistics would not hold after)
    path = save_checkpoint(tmp_path / "model.pt", net, {"arch": None})
    again = load_checkpoint(path, backbone=explicit_stages(make_tiny_cnn(seed=5)))
    assert again.cascade.kind == "grad" and again.ensemble.kind == "linear" and again.ensemble.final
    (logits, exits), (logits2, exits2) = net(tiny_input), again(tiny_input)
    assert torch.equal(exits, exits2) and torch.allclose(logits, logits2)
    assert len(set(exits.tolist())) > 1


def test_unreadable_cascade_or_ensemble_settings_are_refused(tmp_path: Path, tiny_input: torch.Tensor) -> None:
    path, _ = _saved(tmp_path, tiny_input)
    for key, value in (("cascade", "sideways"), ("ensemble", {"kind": "median", "final": True}),
                       ("ensemble", "geometric")):
        payload = torch.load(path, weights_only=True)
        payload["spec"][key] = value
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="cascade or ensemble") as info:
            load_checkpoint(tmp_path / "bad.pt", backbone=make_tiny_cnn())
        assert "\n" not in str(info.value)
