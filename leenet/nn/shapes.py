"""What a stage hands on: each stage's output shape for one image, and whether the layer that
reads it takes channels last (evidence for the feature layout at an exit)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from leenet.errors import LeenetError, brief


@torch.no_grad()
def stage_output_shapes(
    stages: Sequence[nn.Module], example_input: Tensor
) -> tuple[list[tuple[int, ...]], list[int | None]]:
    """Per-sample output shape of each stage for a one-sample input, and for each stage the
    width of the last axis its first layer reads, when that layer is a LayerNorm or Linear
    (None otherwise): channels-last evidence for the features entering it."""
    modes = [s.training for s in stages]
    shapes: list[tuple[int, ...]] = []
    first: list[int | None] = []
    current: dict[str, bool] = {"seen": False}

    def note(module: nn.Module, _args) -> None:
        if current["seen"] or not _reads_channels(module):
            return
        current["seen"] = True
        first[-1] = _last_axis_width(module)

    modules = {id(m): m for s in stages for m in s.modules()}.values()
    hooks = [m.register_forward_pre_hook(note) for m in modules]
    h = example_input
    try:
        for stage in stages:
            stage.eval()
            first.append(None)
            current["seen"] = False
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
    except RuntimeError as exc:
        raise LeenetError(
            f"the backbone failed on an input of shape {tuple(example_input.shape)} ({brief(exc)}): "
            "check the image size and channel count the model expects"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
        for stage, mode in zip(stages, modes):
            stage.train(mode)
    return shapes, first


_CHANNEL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _reads_channels(module: nn.Module) -> bool:
    return isinstance(module, _CHANNEL_LAYERS)


def _last_axis_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return None
