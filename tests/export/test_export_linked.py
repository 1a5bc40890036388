"""Export of linked exits (a cascade and/or an ensemble, leenet.nn.combine): the onnxruntime router
follows the links and agrees with ExitNet.forward sample by sample."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from test_export_onnx import CASES, assert_same_routing

from leenet import ExitNet, GateConfig, attach_exits
from leenet.checkpoint import load_checkpoint, save_checkpoint
from leenet.export import export_onnx
from leenet.nn.combine import ExitEnsemble
from leenet.nn.cost import needed_heads
from leenet_runtime import ExitRunner, read_manifest
from leenet_runtime.manifest import EXIT_PROB, HEAD_LOGITS, LOGITS, PREV_LOGITS, RAW_LOGITS

from conftest import assert_routes_like, mix_exits_, randomize_batchnorm_

BATCH_SIZES = (1, 7, 256)
# (cascade, ensemble final): None = no ensemble
LINKS = {
    "cascade": ("detach", None),
    "ensemble": ("off", True),
    "ensemble-early": ("off", False),
    "cascade+ensemble": ("detach", True),
    "cascade+ensemble-early": ("grad", False),
}


def link_(net: ExitNet, classes: int, cascade: str, final: bool | None, seed: int = 2) -> ExitNet:
    """Give ``net`` random, clearly non-zero cascade links (with a cascade) and an ensemble (``final`` not None)."""
    gen = torch.Generator().manual_seed(seed)
    exits = net.num_exits
    with torch.no_grad():
        if cascade != "off":
            assert net.cascade is not None
            for link in net.cascade.links:
                link.weight.copy_(torch.randn(link.weight.shape, generator=gen) * 0.7)
        if final is not None:
            ensemble = ExitEnsemble(exits, classes, "geometric", final=final)
            ensemble.weight.copy_((torch.rand(exits, exits, generator=gen) + 0.3).tril())
            ensemble.bias.copy_(torch.randn(exits, classes, generator=gen))
            if not final:  # as fit_ensemble leaves it; the final exit ignores them anyway
                ensemble.weight[-1] = torch.eye(exits)[-1]
                ensemble.bias[-1] = 0
            net.set_ensemble(ensemble)
    return net


def linked_net(links: str, *, history: bool, disabled: tuple[int, ...] = (), case: str = "tiny",
               threshold: float = 0.5) -> tuple[ExitNet, torch.Tensor]:
    """A small linked ExitNet whose gates send the samples of its 256-image batch to mixed exits."""
    cascade, final = LINKS[links]
    build, points, shape, classes, head = CASES[case]
    torch.manual_seed(0)
    net = attach_exits(randomize_batchnorm_(build()), points, input_shape=shape, num_classes=classes, head=head,
                       gate_config=GateConfig(history=history), cascade=cascade).eval()
    link_(net, classes, cascade, final)
    x = torch.randn(256, *shape, generator=torch.Generator().manual_seed(1))
    mix_exits_(net, x, threshold)  # gates fit on the linked exits' outputs
    for i in disabled:
        net.gates[i].enabled.fill_(False)
    return net, x


def unlinked(net: ExitNet) -> ExitNet:
    """``net`` with its cascade and ensemble removed: what an export ignoring them would compute."""
    plain = copy.deepcopy(net)
    plain.cascade = None
    plain.set_ensemble(None)
    return plain


@pytest.mark.parametrize("disabled", [(), (0,), (1, 2)], ids=["all-gates", "gate0-off", "gates12-off"])
@pytest.mark.parametrize("history", [True, False], ids=["history", "no-history"])
@pytest.mark.parametrize("links", list(LINKS))
def test_linked_exits_route_like_torch(links: str, history: bool, disabled: tuple[int, ...], tmp_path) -> None:
    net, x = linked_net(links, history=history, disabled=disabled)
    export_onnx(net, tmp_path)
    runner = ExitRunner(tmp_path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        logits, exits = net(x)
    assert len(exits.unique()) >= 2, "the gates should mix the exits"
    if not disabled:  # the links matter: a router that ignored them would not match
        plain_logits, plain_exits = unlinked(net)(x)
        assert (plain_exits != exits).any() or not torch.allclose(plain_logits, logits, atol=1e-3)
    assert_same_routing(net, runner, x, atol=1e-5, singles=4)


@pytest.mark.parametrize("case", ["digits", "resnet"])
def test_linked_exits_of_other_heads(case: str, tmp_path) -> None:
    # flatten heads (digits), SDN heads (resnet): the cascade link and ensemble sit on any head
    net, x = linked_net("cascade+ensemble", history=True, case=case)
    export_onnx(net, tmp_path)
    assert_same_routing(net, ExitRunner(tmp_path), x, atol=1e-5, singles=4)


@pytest.mark.parametrize("links", ["cascade", "cascade+ensemble"])
def test_runtime_that_ignored_the_links_would_fail(links: str, tmp_path) -> None:
    # the same network without its links routes the batch differently: the checks above can tell
    net, x = linked_net(links, history=False)
    with torch.no_grad():
        want_logits, want_exit = net(x)
        plain_logits, plain_exit = unlinked(net)(x)
    assert (plain_exit != want_exit).float().mean() > 0.05
    same = plain_exit == want_exit
    assert not np.allclose(plain_logits[same].numpy(), want_logits[same].numpy(), atol=1e-3)
    export_onnx(net, tmp_path)
    logits, exit_index = ExitRunner(tmp_path)(x.numpy())
    with torch.no_grad():
        reference = net.forward_all(x)
    assert_routes_like(reference, net.threshold, exit_index, logits)


def test_every_gate_off_with_a_final_ensemble_runs_every_head(tmp_path) -> None:
    net, x = linked_net("cascade+ensemble", history=False, disabled=(0, 1, 2))
    manifest = read_manifest(export_onnx(net, tmp_path).parent)
    assert [e.head for e in manifest.exits] == [True] * 4 and not any(e.enabled for e in manifest.exits[:-1])
    assert RAW_LOGITS in manifest.exits[-1].inputs
    with torch.no_grad():
        want = net(x)[0]
        backbone = net.forward_all(x).logits  # ensemble outputs, the last the final exit's
    np.testing.assert_allclose(want.numpy(), backbone[:, -1].numpy(), atol=1e-5)
    assert_same_routing(net, ExitRunner(tmp_path), x, atol=1e-5, singles=4)


def test_every_gate_off_without_a_final_ensemble_runs_the_plain_backbone(tmp_path) -> None:
    net, x = linked_net("cascade+ensemble-early", history=True, disabled=(0, 1, 2))
    manifest = read_manifest(export_onnx(net, tmp_path).parent)
    assert not any(e.head for e in manifest.exits[:-1]) and manifest.exits[-1].inputs == ("x",)
    assert manifest.exits[-1].cost == pytest.approx(1.0)
    assert_same_routing(net, ExitRunner(tmp_path), x, atol=1e-5, singles=4)


@pytest.mark.parametrize("links", list(LINKS))
def test_manifest_describes_the_links(links: str, tmp_path) -> None:
    net, _ = linked_net(links, history=True, disabled=(1,))
    path = export_onnx(net, tmp_path)
    raw = json.loads(path.read_text())
    manifest = read_manifest(tmp_path)
    ensemble = net.ensemble is not None
    assert raw["version"] == 2 and raw["linked"] is True and raw["final_heads"] is net.final_reads_heads
    assert manifest.linked and manifest.final_heads == net.final_reads_heads
    enabled = net.enabled_exits().tolist()
    assert [e.head for e in manifest.exits[:-1]] == needed_heads(enabled, True, net.final_reads_heads)
    assert [e.cost for e in manifest.exits] == pytest.approx(net.routed_cost().tolist())
    exits = manifest.exits
    assert RAW_LOGITS not in exits[0].inputs  # the first head reads no earlier head
    assert all(RAW_LOGITS in e.inputs for e in exits[1:-1])
    assert (RAW_LOGITS in exits[-1].inputs) == net.final_reads_heads
    assert PREV_LOGITS in exits[2].inputs and PREV_LOGITS not in exits[1].inputs  # gate 1 is off
    assert EXIT_PROB not in exits[1].outputs
    for entry in exits[:-1]:  # the head's own logits come out (last) only when the ensemble changes them
        assert entry.outputs[:2] == ("features", LOGITS)
        assert (HEAD_LOGITS in entry.outputs) == ensemble
        assert HEAD_LOGITS not in entry.outputs[:-1]


def test_unlinked_manifest_is_version_1_without_link_keys(tmp_path) -> None:
    net, _ = linked_net("cascade", history=True)
    plain = unlinked(net)
    raw = json.loads(export_onnx(plain, tmp_path).read_text())
    assert raw["version"] == 1 and "linked" not in raw and "final_heads" not in raw
    assert all(RAW_LOGITS not in e["inputs"] and HEAD_LOGITS not in e["outputs"] for e in raw["exits"])
    manifest = read_manifest(tmp_path)
    assert not manifest.linked and not manifest.final_heads


def test_checkpointed_linked_net_exports_alike(tmp_path) -> None:
    net, x = linked_net("cascade+ensemble", history=True, disabled=(0,))
    save_checkpoint(tmp_path / "model.pt", net)
    loaded = load_checkpoint(tmp_path / "model.pt", backbone=CASES["tiny"][0]()).eval()
    assert loaded.cascade is not None and loaded.final_reads_heads
    export_onnx(loaded, tmp_path / "export")
    assert_same_routing(net, ExitRunner(tmp_path / "export"), x, atol=1e-5, singles=4)
