"""Tests for leenet.split: cutting a traced backbone into stages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.backbones.archs import SmallResNet
from leenet.errors import ExitPointError, LeenetError
from leenet.nn.split import split_backbone, valid_exit_points


def _compose(stages: list[nn.Module], x: Tensor) -> Tensor:
    for stage in stages:
        x = stage(x)
    return x


class DenseBlock(nn.Module):
    """DenseNet-style: every layer sees the concatenation of all earlier outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x, self.a(x)]
        feats.append(self.b(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class DenseToy(nn.Module):
    """A concatenating block, functional relu/pool at the end, a 2-D MLP classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = DenseBlock()
        self.trans = nn.Conv2d(12, 6, 1)
        self.classifier = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x: Tensor) -> Tensor:
        x = self.trans(self.block(self.stem(x)))
        x = F.adaptive_avg_pool2d(F.relu(x), 1)
        return self.classifier(torch.flatten(x, 1))


class ConstantToy(nn.Module):
    """A parameter-derived value made at the start and used at the end (crosses every cut)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.scale * 3
        return self.b(self.a(x)) * s


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) if x.sum() > 0 else x


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.a(x) + y


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return SmallResNet(num_classes=5, in_channels=3, width=8).eval()


def test_stages_compose_to_the_model_exactly(resnet: nn.Module) -> None:
    x = torch.randn(3, 3, 16, 16)
    stages = split_backbone(resnet, ["stem", "layer1", "layer2.0", "layer3"])
    assert len(stages) == 5
    with torch.no_grad():
        assert torch.equal(_compose(stages, x), resnet(x))
        h = stages[0](x)
    assert h.shape == (3, 8, 16, 16)


def test_every_valid_exit_point_cuts_exactly(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 16, 16)
    names = valid_exit_points(resnet)
    with torch.no_grad():
        expected = resnet(x)
        for name in names:
            assert torch.equal(_compose(split_backbone(resnet, [name]), x), expected), name


def test_valid_exit_points_are_clean_cuts_in_execution_order(resnet: nn.Module) -> None:
    names = valid_exit_points(resnet)
    for name in ("stem", "layer1.0", "layer1", "layer2", "layer3.0", "layer3", "pool", "layer1.0.relu"):
        assert name in names
    for name in ("layer1.0.conv1", "layer1.0.bn2", "layer2.0.downsample", "fc", ""):
        assert name not in names
    order = [names.index(n) for n in ("stem", "layer1.0", "layer1", "layer2", "layer3", "pool")]
    assert order == sorted(order)
    assert names.index("layer1") < names.index("layer1.1") < names.index("layer1.1.relu")  # same cut


def test_stages_share_parameters_and_mode_with_the_model() -> None:
    model = SmallResNet(num_classes=5, in_channels=3, width=8)
    stages = split_backbone(model, ["layer1", "layer2"])
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    stage_ptrs = [p.data_ptr() for s in stages for p in s.parameters()]
    assert set(stage_ptrs) == model_ptrs and len(stage_ptrs) == len(model_ptrs)
    assert stages[1].get_submodule("layer2.0.conv1") is model.layer2[0].conv1
    model.eval()
    assert not stages[0].get_submodule("stem.1").training
    _compose(stages, torch.randn(2, 3, 8, 8)).sum().backward()
    assert model.stem[0].weight.grad is not None


def test_cut_inside_a_residual_block_is_refused_with_the_valid_list(resnet: nn.Module) -> None:
    with pytest.raises(ExitPointError, match=r"'layer1\.0\.conv1' leaves 2 live tensors") as info:
        split_backbone(resnet, ["layer1.0.conv1"])
    message = str(info.value)
    assert "valid exit points:" in message and "layer1" in message and "layer2" in message
    assert "\n" not in message


def test_unknown_name_lists_valid_points_and_suggests(resnet: nn.Module) -> None:
    with pytest.raises(ExitPointError, match=r"unknown exit point 'layer22'.*did you mean 'layer2'.*stem"):
        split_backbone(resnet, ["layer22"])
    with pytest.raises(ExitPointError, match="unknown exit point 3"):
        split_backbone(resnet, [3])


@pytest.mark.parametrize(
    ("points", "pattern"),
    [
        (["layer2", "layer1"], r"execution order: 'layer1' runs before 'layer2'"),
        (["layer1", "layer2", "layer1"], r"'layer1' is given twice"),
        (["layer1.1", "layer1"], r"'layer1\.1' and 'layer1' cut at the same place"),
        (["fc"], r"'fc' leaves nothing for the last stage"),
    ],
)
def test_bad_exit_point_lists_are_refused(resnet: nn.Module, points: list[str], pattern: str) -> None:
    with pytest.raises(ExitPointError, match=pattern):
        split_backbone(resnet, points)


def test_a_string_is_not_a_list_of_exit_points(resnet: nn.Module) -> None:
    with pytest.raises(ExitPointError, match=r"a list of names, e\.g\. \['layer1'\]"):
        split_backbone(resnet, "layer1")


def test_no_exit_points_gives_one_stage(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 8, 8)
    (stage,) = split_backbone(resnet, [])
    with torch.no_grad():
        assert torch.equal(stage(x), resnet(x))


def test_concatenation_and_functional_tail() -> None:
    model = DenseToy().eval()
    names = valid_exit_points(model)
    assert "block" in names and "classifier.0" in names and "classifier.1" in names
    assert "block.a" not in names  # its output and the stem's both feed the concatenation
    with pytest.raises(ExitPointError, match="2 live tensors"):
        split_backbone(model, ["block.a"])
    x = torch.randn(2, 3, 6, 6)
    stages = split_backbone(model, ["stem", "block", "trans", "classifier.1"])
    with torch.no_grad():
        assert torch.equal(_compose(stages, x), model(x))
        assert stages[1](stages[0](x)).shape == (2, 12, 6, 6)
        assert _compose(stages[:4], x).shape == (2, 8)  # a 2-D stage output


def test_values_independent_of_the_input_do_not_block_a_cut() -> None:
    model = ConstantToy()
    assert valid_exit_points(model) == ["a", "b"]
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(_compose(split_backbone(model, ["a", "b"]), x), model(x))


def test_module_without_work_is_refused() -> None:
    model = DenseToy()
    model.unused = nn.Linear(2, 2)
    with pytest.raises(ExitPointError, match="'unused' does no work of its own"):
        split_backbone(model, ["unused"])


def test_long_valid_lists_are_compressed() -> None:
    layers = [nn.Conv2d(3, 3, 3, padding=1) for _ in range(40)]
    model = nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with pytest.raises(ExitPointError, match=r"valid exit points: 0\.0\.\.0\.38, 0, 1"):
        split_backbone(model, ["2"])


def test_untraceable_model_asks_for_explicit_stages() -> None:
    with pytest.raises(LeenetError, match="cannot trace Branchy.*explicit list of stages"):
        split_backbone(Branchy(), ["a"])
    with pytest.raises(LeenetError, match="takes 2 inputs"):
        valid_exit_points(TwoInputs())
    with pytest.raises(LeenetError, match="must be a torch.nn.Module"):
        split_backbone(lambda x: x, ["a"])


class _Drop(nn.Module):
    """Outside torch.nn and mode-dependent, like torchvision's StochasticDepth: zero in training."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 0 if self.training else x


class _ModeToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = _Drop()
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None, scale: float = 1.0) -> Tensor:
        h = self.b(self.drop(self.a(x))) * scale
        if mask is not None:
            h = h * mask
        return self.fc(h.mean((2, 3)))


def test_traced_in_eval_mode_and_mode_dependent_modules_follow_train_and_eval() -> None:
    model = _ModeToy().train()  # attached in training mode, as a pipeline may
    stages = split_backbone(model, ["drop"])
    assert model.training  # the model's own mode is restored after tracing
    x = torch.randn(2, 3, 6, 6)
    for stage in stages:
        stage.eval()
    assert torch.allclose(_compose(stages, x), model.eval()(x))
    for stage in stages:
        stage.train()
    assert torch.allclose(_compose(stages, x), model.train()(x))  # _Drop stays a call, not a frozen branch
    assert any(n.op == "call_module" and n.target == "drop" for n in stages[0].graph.nodes)


def test_optional_forward_arguments_are_traced_at_their_defaults() -> None:
    model = _ModeToy().eval()
    assert "b" in valid_exit_points(model)
    stages = split_backbone(model, ["b"])
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(_compose(stages, x), model(x))
