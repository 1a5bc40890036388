"""Checks before any training: the images fit the backbone, and a batch's activations fit in memory."""

from __future__ import annotations

import torch
from torch import nn

from leenet.data import DatasetSpec
from leenet.errors import DataError, brief


@torch.no_grad()
def check_fits(backbone: nn.Module, arch: str, spec: DatasetSpec, device: torch.device) -> tuple[int, int]:
    """One image through the backbone before any training: wrong sizes fail here, in one line.

    Returns the number of values the backbone's layers output for that image: their sum and
    the largest (what :func:`check_memory` prices).
    """
    shape = (1, spec.in_channels, spec.image_size, spec.image_size)
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()) if torch.is_tensor(out) else None)
             for m in backbone.modules()  # leaf layers; in-place ones (ReLU(inplace=True)) reuse their input's memory
             if next(m.children(), None) is None and not getattr(m, "inplace", False)]
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(torch.zeros(shape, device=device))
    except RuntimeError as exc:
        raise DataError(
            f"{spec.name} images of shape {shape[1:]} do not fit {arch} ({brief(exc)}): "
            "pick another --arch or set --image-size"
        ) from None
    finally:
        backbone.train(was_training)
        for hook in hooks:
            hook.remove()
    if out.dim() != 2 or out.shape[1] != spec.num_classes:
        raise DataError(
            f"{arch} gives outputs of shape {tuple(out.shape[1:])} but {spec.name} has {spec.num_classes} "
            f"classes: pass --num-classes {spec.num_classes}"
        )
    return sum(sizes), max(sizes, default=0)


def check_memory(activations: tuple[int, int], batch_size: int, image_size: int, device: torch.device,
                  training: bool) -> None:
    """Refuse a batch whose activations alone cannot fit in free memory, before the OS kills the run.

    Meant to stay below the true need, so that it refuses only runs that cannot fit: training
    keeps every layer's output for the backward pass (priced at 2 bytes a value, bf16's, where
    fp32 keeps 4; weights, gradients and workspace not counted), evaluation at least the
    largest output and its input. Where free memory cannot be read it checks nothing.
    """
    total, largest = activations
    need = batch_size * 2 * (total if training else 2 * largest)
    free = available_memory(device)
    if free is not None and need > free:
        what = "training the backbone" if training else "running the backbone"
        raise DataError(
            f"--batch-size {batch_size} at --image-size {image_size} needs at least {need / 2**30:.1f} GiB for "
            f"{what} but {device.type} has {free / 2**30:.1f} GiB free: lower --batch-size or --image-size"
        )


def available_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on ``device``: the GPU's free memory, or Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
