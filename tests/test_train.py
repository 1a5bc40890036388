"""Tests for leenet.train: backbone training arithmetic and head training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from leenet import ExitNet, GateConfig, LeenetError, attach_exits, freeze_, train_heads

from conftest import INPUT_SHAPE, NUM_CLASSES


def test_resolve_precision() -> None:
    from leenet.train import resolve_precision

    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(LeenetError, match="precision"):
        resolve_precision("fp16")


def test_bf16_training_hands_back_a_float32_contiguous_model(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    from leenet.train import train_classifier

    model = nn.Sequential(*tiny_stages)
    labels = torch.arange(len(tiny_input)) % NUM_CLASSES
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_classifier(model, lambda: [(tiny_input, labels)] * 3, steps_per_epoch=3, epochs=2, lr=0.05,
                              precision="bf16", progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.is_contiguous()


def test_train_heads_trains_heads_only_with_frozen_batchnorm(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    """The backbone stays as it was (weights and BatchNorm statistics); every head moves."""
    net = attach_exits(tiny_stages, ["a", "b", "c"], input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in net.stages.state_dict().items()}
    heads = [p.clone() for p in net.heads.parameters()]
    labels = torch.arange(len(tiny_input)) % NUM_CLASSES
    history = train_heads(net, lambda: [(tiny_input, labels)], steps_per_epoch=1, epochs=3)
    assert len(history) == 3 and all(h == h for h in history)
    assert all(torch.equal(before[k], v) for k, v in net.stages.state_dict().items())
    assert all(not torch.equal(a, b) for a, b in zip(heads, net.heads.parameters()))
    assert not any(p.requires_grad for p in net.stages.parameters())


def test_a_diverging_head_loss_is_one_line(tiny_stages: list[nn.Module], tiny_input: Tensor) -> None:
    net = attach_exits(tiny_stages, ["a", "b", "c"], input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    bad = torch.full_like(tiny_input, float("nan"))
    labels = torch.zeros(len(tiny_input), dtype=torch.long)
    try:
        train_heads(net, lambda: [(bad, labels)], steps_per_epoch=1, epochs=1)
    except LeenetError as exc:
        assert "loss became nan" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("a NaN loss must stop training")
    assert freeze_(nn.BatchNorm2d(2)).training is False and isinstance(net, ExitNet)
    assert GateConfig().history



class _MemoryCheckpoint:
    """An epoch checkpoint kept in memory (the interface of leenet.resume.EpochCheckpoint) that
    stops training, like a kill, once epoch ``stop_after`` is saved."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.saved, self.stop_after = None, stop_after

    def restore(self) -> dict | None:
        return copy.deepcopy(self.saved)

    def save(self, state: dict) -> None:
        self.saved = copy.deepcopy(state)
        if state["epoch"] == self.stop_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("part", ["backbone", "heads"])
def test_training_continues_after_the_last_epoch_saved(tiny_cnn: nn.Module, tiny_input: Tensor, part: str,
                                                       capsys) -> None:
    """Stopped after epoch 2 of 4, then restarted from its checkpoint: the weights of a run never stopped."""
    from leenet.train import train_classifier

    labels = torch.arange(len(tiny_input)) % NUM_CLASSES
    batches = [(tiny_input[:32], labels[:32]), (tiny_input[32:], labels[32:])]
    torch.manual_seed(0)
    start = attach_exits(copy.deepcopy(tiny_cnn), ["block1", "block2"], input_shape=INPUT_SHAPE,
                         num_classes=NUM_CLASSES)

    def fit(checkpoint: _MemoryCheckpoint | None) -> ExitNet:
        net = copy.deepcopy(start)
        if part == "backbone":
            train_classifier(nn.Sequential(*net.stages), lambda: batches, steps_per_epoch=2, epochs=4,
                             checkpoint=checkpoint)
        else:
            train_heads(net, lambda: batches, steps_per_epoch=2, epochs=4, checkpoint=checkpoint)
        return net

    whole = fit(None)
    checkpoint = _MemoryCheckpoint(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint)
    capsys.readouterr()
    checkpoint.stop_after = None
    resumed = fit(checkpoint)
    assert checkpoint.saved["epoch"] == 4 and len(checkpoint.saved["history"]) == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = capsys.readouterr().err.splitlines()  # stderr is no terminal here: one line per epoch
    assert [line.split(":")[0] for line in lines] == [f"{part} epoch 3/4", f"{part} epoch 4/4"]
