"""Backbone weights: torchvision's (downloaded once to the torch hub cache), state-dict files
read with ``weights_only=True`` and checked key by key, and the surgery that adapts a
pretrained network to another class or channel count.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from leenet.backbones.archs import kaiming_init
from leenet.errors import CheckpointError, LeenetError, brief

_STATE_KEYS = ("backbone_state", "state_dict", "model_state")  # where dict files nest the weights


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the classifier (the last ``nn.Linear`` in module order) for a new, random one.

    Returns:
        The new layer, on the old one's device and dtype.
    """
    name, old = _last_module(model, nn.Linear, "nn.Linear classifier")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    model.set_submodule(name, new)
    return new


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier (the last ``nn.Linear``), for classifier-only training."""
    return list(_last_module(model, nn.Linear, "nn.Linear classifier")[1].parameters())


def adapt_first_conv(model: nn.Module, in_channels: int, *, pretrained: bool) -> None:
    """Rebuild the first ``nn.Conv2d`` for ``in_channels`` inputs, if it has another count.

    Args:
        model: the network, changed in place.
        in_channels: input channels wanted.
        pretrained: keep the learned kernels: summed over channels for one input channel,
            otherwise tiled and rescaled (as timm does); else initialize anew.
    """
    name, old = _last_module(model, nn.Conv2d, "nn.Conv2d", first=True)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None, old.padding_mode)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    if pretrained:
        with torch.no_grad():
            kernel = old.weight
            if in_channels == 1:
                new.weight.copy_(kernel.sum(dim=1, keepdim=True))
            else:
                reps = -(-in_channels // kernel.shape[1])
                tiled = kernel.repeat(1, reps, 1, 1)[:, :in_channels]
                new.weight.copy_(tiled * (kernel.shape[1] / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    else:
        kaiming_init(new)
    model.set_submodule(name, new)


def first_conv_name(model: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` (the stem that sees the image channels)."""
    return _last_module(model, nn.Conv2d, "nn.Conv2d", first=True)[0]


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier: the last ``nn.Linear`` in module order."""
    return _last_module(model, nn.Linear, "nn.Linear classifier")[0]


def _last_module(model: nn.Module, kind: type, what: str, first: bool = False) -> tuple[str, nn.Module]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]
    if not found:
        raise LeenetError(f"{type(model).__name__} has no {what}: replace its layers yourself")
    return found[0] if first else found[-1]


def load_torchvision_weights(arch: str, weights: WeightsEnum) -> nn.Module:
    """torchvision's ``arch`` with ``weights``, downloaded to the torch hub cache if missing."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / Path(urllib.parse.urlparse(weights.url).path).name
    if not target.is_file():
        digest = torch.hub.HASH_REGEX.search(target.name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(target), digest[1] if digest else None)
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            raise LeenetError(
                f"cannot download {arch} weights {weights.name} ({brief(exc, 100)}): no network? fetch "
                f"{weights.url} elsewhere and put it in {folder}, where the same --weights finds it"
            ) from None
    try:
        return getattr(torchvision.models, arch)(weights=weights)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(
            f"cached weights {target} are unreadable ({brief(exc, 100)}): delete the file and retry"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from ``path``: plain, or nested under one of ``_STATE_KEYS``.

    A ``module.`` prefix on every key (``nn.DataParallel``) is removed.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no state dict.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights file {path} is a directory: pass the state-dict file inside it")
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found: pass an existing state-dict file")
    obj = load_tensors(path, "weights file", "save the weights with torch.save(model.state_dict(), path)")
    if isinstance(obj, dict):
        obj = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} holds no state dict (found: {keys}); expected a plain state dict or one "
            f"under the key {', '.join(_STATE_KEYS)}"
        )
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checked(
    model: nn.Module, state: dict[str, Tensor], path: Path, name: str, num_classes: int
) -> None:
    """Load ``state`` into ``model`` after checking every key and shape; CheckpointError if not."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(lst)} {kind} keys (e.g. {lst[0]})" for kind, lst in
                 (("missing", missing), ("unexpected", unexpected)) if lst]
        raise CheckpointError(
            f"{path} does not fit {name}: {', '.join(parts)}; it holds weights of another backbone"
        )
    classifier, first_conv = classifier_name(model), first_conv_name(model)
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is None or theirs.shape == mine.shape:
            continue
        built = f"{tuple(theirs.shape)} in the file but {tuple(mine.shape)} in {name}"
        if key.startswith(classifier + "."):
            hint = (f"{built}: the file classifies {theirs.shape[0]} classes, this model {num_classes}; "
                    "add --transfer (transfer=True) to train a new classifier on its features")
        elif key == first_conv + ".weight":
            hint = (f"{built}: the file takes {theirs.shape[1]}-channel images, this model {mine.shape[1]}; "
                    f"use weights for {mine.shape[1]}-channel images")
        else:
            hint = f"{built}: the file is for another variant or width"
        raise CheckpointError(f"{key} has shape {hint}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # e.g. sparse or otherwise unusual tensors in the file
        raise CheckpointError(
            f"{path} holds tensors {name} cannot load ({brief(exc, 200)}): save a plain dense state dict"
        ) from None


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy pickle format


def load_tensors(path: Path, what: str, fix: str):
    """``torch.load`` of tensors only (``weights_only``: no pickled code runs), or a one-line
    :class:`CheckpointError` saying why the ``what`` file cannot be read, then ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise CheckpointError(f"{what} {path} {_unreadable(path, exc)}: {fix}") from None


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` failed, in a few words: not a torch file, more than tensors, or damaged."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        return f"cannot be read ({brief(error, 120)})"
    if not head.startswith(_TORCH_MAGIC):
        return f"is not a PyTorch file (torch.save writes a zip archive; this one starts with {head!r})"
    pickled = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if pickled:
        return f"holds a pickled {pickled[1]}, not only tensors (LEENet runs no pickled code)"
    return f"is damaged ({brief(exc, 120)})"
