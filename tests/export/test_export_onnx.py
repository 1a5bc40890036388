"""Staged ONNX export: the onnxruntime router agrees with ExitNet.forward, sample by sample."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers

from leenet import ExitNet, GateConfig, LeenetError, attach_exits
from leenet.backbones.archs import DigitsCNN, SmallResNet, VGGCifar
from leenet.export import export_onnx
from leenet_runtime import ExitRunner
from leenet_runtime.manifest import EXIT_PROB, LOGITS, PREV_LOGITS, read_manifest

from conftest import EXIT_POINTS, INPUT_SHAPE, assert_routes_like, make_tiny_cnn, mix_exits_, randomize_batchnorm_

BATCH_SIZES = (1, 7, 256)


def _small_vgg() -> nn.Module:
    vgg = VGGCifar(num_classes=10)
    vgg.features = make_layers([8, "M", 16, "M", 32, "M"], batch_norm=True)
    vgg.classifier = nn.Linear(32, 10)
    return vgg


def _small_densenet() -> nn.Module:
    return torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2, 2), num_init_features=8, bn_size=2,
                                       num_classes=10)


# name → (backbone builder, exit points, input shape, classes, head)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], tuple[int, ...], int, str]] = {
    "tiny": (make_tiny_cnn, EXIT_POINTS, INPUT_SHAPE, 5, "pool"),
    "digits": (lambda: DigitsCNN(width=8), ["block1", "block2"], (1, 8, 8), 10, "flatten"),
    "resnet": (lambda: SmallResNet(width=8, blocks=1), ["layer1", "layer2"], (3, 32, 32), 10, "sdn"),
    "resnet-deep": (lambda: SmallResNet(width=8, blocks=1), ["layer1", "layer2"], (3, 32, 32), 10, "deep"),
    "vgg": (_small_vgg, ["features.3", "features.7"], (3, 32, 32), 10, "pool"),
    "densenet": (_small_densenet, ["features.transition1", "features.transition2"], (3, 32, 32), 10, "pool"),
}


def mixed_net(case: str, gate_config: GateConfig, disabled: tuple[int, ...] = (),
              threshold: float = 0.5) -> tuple[ExitNet, torch.Tensor]:
    """A small ExitNet of ``case`` whose gates send the samples of its 256-image batch to mixed exits."""
    build, points, shape, classes, head = CASES[case]
    torch.manual_seed(0)
    backbone = randomize_batchnorm_(build())
    net = attach_exits(backbone, points, input_shape=shape, num_classes=classes, head=head,
                       gate_config=gate_config).eval()
    x = torch.randn(256, *shape, generator=torch.Generator().manual_seed(1))
    mix_exits_(net, x, threshold)
    for i in disabled:
        net.gates[i].enabled.fill_(False)
    return net, x


def assert_same_routing(net: ExitNet, runner: ExitRunner, x: torch.Tensor, *, atol: float = 1e-4,
                        singles: int = 0) -> None:
    """Torch's router and the runtime's route like torch's compute-all pass (same exit and class for
    every sample but a tie at the threshold, logits within ``atol``), at each batch size, then for
    ``singles`` more single images (batch 1 takes the fast paths)."""
    batches = [x[:size] for size in BATCH_SIZES] + [x[k + 1:k + 2] for k in range(singles)]
    for batch in batches:
        with torch.no_grad():
            reference = net.forward_all(batch)
            want_logits, want_exit = net(batch)
        assert_routes_like(reference, net.threshold, want_exit, want_logits, atol=atol)
        logits, exit_index = runner(batch.numpy())
        assert_routes_like(reference, net.threshold, exit_index, logits, atol=atol)


@pytest.mark.parametrize("disabled", [(), (0,)], ids=["all-gates", "gate0-off"])
@pytest.mark.parametrize("history", [True, False], ids=["history", "no-history"])
@pytest.mark.parametrize("case", list(CASES))
def test_runtime_routes_like_torch(case: str, history: bool, disabled: tuple[int, ...], tmp_path) -> None:
    net, x = mixed_net(case, GateConfig(history=history), disabled)
    export_onnx(net, tmp_path)
    runner = ExitRunner(tmp_path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        exits = net(x)[1]
    assert len(exits.unique()) >= 2, "the gates should mix the exits"
    assert_same_routing(net, runner, x)


@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_pooled_and_class_gate_inputs(threshold: float, tmp_path) -> None:
    net, x = mixed_net("tiny", GateConfig(history=True, pooled=True, classes=True), threshold=threshold)
    export_onnx(net, tmp_path)
    assert_same_routing(net, ExitRunner(tmp_path), x)


def test_heads_no_gate_needs_are_not_exported(tmp_path) -> None:
    # history on, gate 1 off: head 1 still feeds gate 2; gate 2 off too leaves heads 1, 2 unneeded
    net, x = mixed_net("tiny", GateConfig(history=True), disabled=(1,))
    exits = read_manifest(export_onnx(net, tmp_path / "a").parent).exits
    assert [e.head for e in exits] == [True, True, True, True]
    assert [e.enabled for e in exits] == [True, False, True, True]
    assert EXIT_PROB not in exits[1].outputs and LOGITS in exits[1].outputs
    assert PREV_LOGITS in exits[2].inputs and PREV_LOGITS not in exits[0].inputs
    net.gates[2].enabled.fill_(False)
    exits = read_manifest(export_onnx(net, tmp_path / "b").parent).exits
    assert [e.head for e in exits] == [True, False, False, True]
    assert exits[1].outputs == ("features",)
    assert_same_routing(net, ExitRunner(tmp_path / "b"), x)


def test_every_gate_off_runs_the_plain_backbone(tmp_path) -> None:
    net, x = mixed_net("tiny", GateConfig(history=False), disabled=(0, 1, 2))
    manifest = read_manifest(export_onnx(net, tmp_path).parent)
    assert not any(e.head for e in manifest.exits[:-1])
    assert manifest.exits[-1].cost == pytest.approx(1.0)
    assert_same_routing(net, ExitRunner(tmp_path), x)


def test_manifest_records_costs_and_hashes(tmp_path) -> None:
    net, _ = mixed_net("digits", GateConfig(history=True), disabled=(1,), threshold=0.6)
    path = export_onnx(net, tmp_path, class_names=list("abcdefghij"))
    manifest = read_manifest(tmp_path)
    raw = json.loads(path.read_text())
    assert raw["format"] == "leenet.export" and raw["version"] == 1 and raw["opset"] == 17
    assert manifest.threshold == pytest.approx(0.6) and manifest.gate_history
    assert [e.cost for e in manifest.exits] == pytest.approx(net.routed_cost().tolist())
    assert [e.name for e in manifest.exits] == net.exit_names
    assert manifest.class_names == tuple("abcdefghij") and manifest.input_shape == (1, 8, 8)
    assert sorted(manifest.files) == sorted(p.name for p in tmp_path.glob("*.onnx"))


def test_export_replaces_an_earlier_export_but_not_other_files(tmp_path) -> None:
    net, _ = mixed_net("tiny", GateConfig())
    export_onnx(net, tmp_path / "out")
    export_onnx(net, tmp_path / "out")  # an earlier export is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LeenetError, match="holds other files") as err:
        export_onnx(net, tmp_path / "other")
    assert "\n" not in str(err.value)


def test_run_dir_without_model_is_refused(tmp_path) -> None:
    with pytest.raises(LeenetError, match="has no model.pt") as err:
        export_onnx(tmp_path, tmp_path / "out")
    assert "\n" not in str(err.value)


def test_wrong_class_name_count_is_refused(tmp_path) -> None:
    net, _ = mixed_net("tiny", GateConfig())
    with pytest.raises(LeenetError, match="3 class names for a network with 5 classes"):
        export_onnx(net, tmp_path, class_names=["a", "b", "c"])


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_gates_export_at_older_and_newer_opsets(opset: int, tmp_path) -> None:
    # the gates' entropy (torch.linalg.vecdot) has no ONNX symbolic in torch; export adds one,
    # with ReduceSum's axes an attribute before opset 13 and an input from 13 on
    net, x = mixed_net("tiny", GateConfig(history=True))
    export_onnx(net, tmp_path, opset=opset)
    assert read_manifest(tmp_path).opset == opset
    assert_same_routing(net, ExitRunner(tmp_path), x)
