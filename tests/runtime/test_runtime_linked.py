"""ExitRunner on linked exits (a cascade and an ensemble): manifest version 2, its checks, and
version 1 manifests (no link keys) still read as unlinked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from leenet import GateConfig, attach_exits
from leenet.export import export_onnx
from leenet.nn.combine import ExitEnsemble
from leenet_runtime import ExitRunner, ExportError, read_manifest
from leenet_runtime.manifest import MANIFEST_NAME, RAW_LOGITS, needed_heads

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, assert_routes_like, make_tiny_cnn, mix_exits_


def _net(linked: bool):
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       gate_config=GateConfig(history=False), cascade="detach" if linked else "off").eval()
    if linked:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for link in net.cascade.links:
                link.weight.copy_(torch.randn(link.weight.shape, generator=gen))
            ensemble = ExitEnsemble(net.num_exits, NUM_CLASSES, "geometric", final=True)
            ensemble.weight.copy_((torch.rand(4, 4, generator=gen) + 0.3).tril())
            ensemble.bias.copy_(torch.randn(4, NUM_CLASSES, generator=gen))
            net.set_ensemble(ensemble)
    x = torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    return mix_exits_(net, x, 0.5), x


@pytest.fixture(scope="module")
def linked_export(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    net, x = _net(linked=True)
    out = tmp_path_factory.mktemp("export") / "linked"
    export_onnx(net, out)
    return out, net, x


@pytest.fixture
def copy_of(linked_export, tmp_path) -> Path:
    return Path(shutil.copytree(linked_export[0], tmp_path / "copy"))


def _edit(export: Path, change) -> None:
    manifest = json.loads((export / MANIFEST_NAME).read_text())
    change(manifest)
    (export / MANIFEST_NAME).write_text(json.dumps(manifest))


def _one_line_error(export: Path, match: str) -> None:
    with pytest.raises(ExportError, match=match) as err:
        ExitRunner(export)
    assert "\n" not in str(err.value)


def test_linked_export_routes_like_torch(linked_export) -> None:
    export, net, x = linked_export
    runner = ExitRunner(export)
    assert runner.manifest.version == 2 and runner.manifest.linked and runner.manifest.final_heads
    for rows in (slice(0, 64), slice(0, 1), slice(5, 6), slice(9, 11)):
        with torch.no_grad():
            reference = net.forward_all(x[rows])
        logits, exit_index = runner(x[rows].numpy())
        assert_routes_like(reference, net.threshold, exit_index, logits)


def test_version_1_manifest_reads_as_unlinked(tmp_path) -> None:
    net, x = _net(linked=False)
    export_onnx(net, tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["version"] == 1 and "linked" not in raw and "final_heads" not in raw
    manifest = read_manifest(tmp_path)
    assert not manifest.linked and not manifest.final_heads
    with torch.no_grad():
        reference = net.forward_all(x)
    logits, exit_index = ExitRunner(tmp_path)(x.numpy())
    assert_routes_like(reference, net.threshold, exit_index, logits)


def test_version_2_without_link_keys_is_refused(copy_of) -> None:
    _edit(copy_of, lambda m: m.pop("linked"))
    _one_line_error(copy_of, "lacks linked")


def test_version_1_cannot_claim_linked_exits(copy_of) -> None:
    _edit(copy_of, lambda m: m.update(version=1))
    _one_line_error(copy_of, "version 1 manifest cannot describe linked exits")


def test_final_heads_without_links_is_refused(copy_of) -> None:
    _edit(copy_of, lambda m: m.update(linked=False))
    _one_line_error(copy_of, "not linked")


def test_missing_raw_logits_input_is_refused(copy_of) -> None:
    def drop(manifest: dict) -> None:
        manifest["exits"][2]["inputs"] = [n for n in manifest["exits"][2]["inputs"] if n != RAW_LOGITS]
    _edit(copy_of, drop)
    _one_line_error(copy_of, "stage2.onnx lacks input 'raw_logits'")


def test_heads_that_break_the_routing_rule_are_refused(copy_of) -> None:
    _edit(copy_of, lambda m: m["exits"][1].update(head=False))
    _one_line_error(copy_of, "run heads")


def test_needed_heads_matches_leenet() -> None:
    from leenet.nn.cost import needed_heads as leenet_needed_heads
    for bits in range(16):
        enabled = [bool(bits >> k & 1) for k in range(4)]
        for chained in (False, True):
            for final in (False, True):
                assert needed_heads(enabled, chained, final) == leenet_needed_heads(enabled, chained, final)
