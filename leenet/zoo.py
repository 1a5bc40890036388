"""Backbone registry: name → builder, default exit points, input size and weights.

Two small networks for the embedded and 28-pixel datasets, torchvision's ImageNet models
(which can load torchvision's pretrained weights), and 32-pixel CIFAR variants of those
(3×3 stride-1 stem, no early max-pool, random init only; see :mod:`leenet.archs`).
"""

from __future__ import annotations

import functools
import http.client
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers

from leenet.archs import DigitsCNN, SmallResNet, VGGCifar, densenet121_cifar, kaiming_init, resnet50_cifar
from leenet.checkpoint import load_tensors
from leenet.errors import CheckpointError, LeenetError, brief

_STATE_KEYS = ("backbone_state", "state_dict", "model_state")  # where dict files nest the weights


@dataclass(frozen=True)
class BackboneInfo:
    """A registered backbone.

    Attributes:
        name: registry name.
        builder: ``builder(num_classes, in_channels)`` → randomly initialized model.
        default_exits: exit point names used when the user gives none.
        input_size: native input height = width in pixels.
        imagenet_normalization: pretrained weights expect ImageNet mean/std inputs.
        weights_enum: torchvision weights enum class, or None when there are no weights.
        description: one line for ``leenet backbones``.
    """

    name: str
    builder: Callable[..., nn.Module]
    default_exits: tuple[str, ...]
    input_size: int
    imagenet_normalization: bool
    weights_enum: type | None
    description: str


def _torchvision_backbone(
    arch: str, num_classes: int, in_channels: int, *, weights: WeightsEnum | None = None
) -> nn.Module:
    """torchvision's ``arch``, with ``weights`` (an enum member) loaded before adapting it."""
    if weights is None:
        model = getattr(torchvision.models, arch)(num_classes=num_classes)
    else:
        model = _load_torchvision_weights(arch, weights)
        if len(weights.meta["categories"]) != num_classes:
            replace_classifier(model, num_classes)
    adapt_first_conv(model, in_channels, pretrained=weights is not None)
    return model


def _vgg_exits(batch_norm: bool) -> tuple[str, ...]:
    """``features.N`` after VGG-11's 2nd, 3rd and 4th max-pool (built on the meta device: free)."""
    with torch.device("meta"):
        features = vgg_make_layers(vgg_cfgs["A"], batch_norm=batch_norm)
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return tuple(f"features.{i}" for i in pools[1:4])


_RESNET_EXITS = ("layer1", "layer2", "layer3")
_DENSENET_EXITS = ("features.denseblock1", "features.denseblock2", "features.denseblock3")


def _registry(*infos: BackboneInfo) -> dict[str, BackboneInfo]:
    return {info.name: info for info in infos}


BACKBONES: dict[str, BackboneInfo] = _registry(
    BackboneInfo(
        "digits_cnn", DigitsCNN, ("block1", "block2"), input_size=8, imagenet_normalization=False,
        weights_enum=None, description="3-block CNN for 8x8 grey digits, 1.2 M MACs",
    ),
    BackboneInfo(
        "small_resnet", SmallResNet, ("layer1.0", "layer1", "layer2", "layer3.0"), input_size=28,
        imagenet_normalization=False, weights_enum=None,
        description="ResNet, 3 stages of 2 BasicBlocks (24/48/96 wide) for 28-32 px, 45 M MACs at 28 px",
    ),
    BackboneInfo(
        "resnet50", functools.partial(_torchvision_backbone, "resnet50"), _RESNET_EXITS, input_size=224,
        imagenet_normalization=True, weights_enum=torchvision.models.ResNet50_Weights,
        description="torchvision ResNet-50 for 224 px, 4.1 G MACs",
    ),
    BackboneInfo(
        "vgg11_bn", functools.partial(_torchvision_backbone, "vgg11_bn"), _vgg_exits(True), input_size=224,
        imagenet_normalization=True, weights_enum=torchvision.models.VGG11_BN_Weights,
        description="torchvision VGG-11 with batch norm for 224 px, 7.6 G MACs",
    ),
    BackboneInfo(
        "vgg11", functools.partial(_torchvision_backbone, "vgg11"), _vgg_exits(False), input_size=224,
        imagenet_normalization=True, weights_enum=torchvision.models.VGG11_Weights,
        description="torchvision VGG-11 for 224 px, 7.6 G MACs",
    ),
    BackboneInfo(
        "densenet121", functools.partial(_torchvision_backbone, "densenet121"), _DENSENET_EXITS,
        input_size=224, imagenet_normalization=True, weights_enum=torchvision.models.DenseNet121_Weights,
        description="torchvision DenseNet-121 for 224 px, 2.8 G MACs",
    ),
    BackboneInfo(
        "resnet50_cifar", resnet50_cifar, _RESNET_EXITS, input_size=32, imagenet_normalization=False,
        weights_enum=None, description="ResNet-50, 3x3 stride-1 stem, no max-pool, for 32 px, 1.3 G MACs",
    ),
    BackboneInfo(
        "vgg11_bn_cifar", functools.partial(VGGCifar, batch_norm=True), _vgg_exits(True), input_size=32,
        imagenet_normalization=False, weights_enum=None,
        description="VGG-11-BN features, global pool, linear, for 32 px, 153 M MACs",
    ),
    BackboneInfo(
        "vgg11_cifar", functools.partial(VGGCifar, batch_norm=False), _vgg_exits(False), input_size=32,
        imagenet_normalization=False, weights_enum=None,
        description="VGG-11 features, global pool, linear, for 32 px, 153 M MACs",
    ),
    BackboneInfo(
        "densenet121_cifar", densenet121_cifar, _DENSENET_EXITS, input_size=32,
        imagenet_normalization=False, weights_enum=None,
        description="DenseNet-121, 3x3 stride-1 stem, no max-pool, for 32 px, 0.89 G MACs",
    ),
)


def backbone_names() -> list[str]:
    """Names of the registered backbones, in registry order."""
    return list(BACKBONES)


def get_backbone_info(name: str) -> BackboneInfo:
    """The registry entry for ``name``; raises LeenetError listing valid names if unknown."""
    if name not in BACKBONES:
        raise LeenetError(f"unknown backbone {name!r} (valid: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def build_backbone(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | Path | None = None,
    transfer: bool = False,
) -> nn.Module:
    """Build a registered backbone, randomly initialized or with weights.

    Args:
        name: a registered backbone (see :func:`backbone_names`).
        num_classes: outputs of the classifier.
        in_channels: input image channels; the first conv is rebuilt when it differs from
            the weights' (pretrained kernels are summed over RGB for one channel).
        weights: None for random init; a member name of the backbone's torchvision
            weights enum (``"DEFAULT"``, ``"IMAGENET1K_V1"``): downloaded once to the torch
            hub cache, the classifier replaced (new, random) if ``num_classes`` differs; or
            a path to a file holding a state dict, plain or under the key
            ``backbone_state``, ``state_dict`` or ``model_state``.
        transfer: the weights file is from another task (e.g. torchvision's ImageNet file
            fetched by hand): load all but the classifier, which starts anew for
            ``num_classes``, and adapt the first conv to ``in_channels``.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        LeenetError: unknown backbone or weights name, or the weights cannot be downloaded.
        CheckpointError: the file is missing, unreadable or does not fit the backbone.
    """
    info = get_backbone_info(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LeenetError(f"{arg} must be a positive integer, got {value!r}")
    if weights is None:
        return info.builder(num_classes, in_channels)
    member = _weights_member(info, weights)
    if member is not None:
        return info.builder(num_classes, in_channels, weights=member)
    state = read_state_dict(weights)
    if transfer:
        return _transfer(info, state, Path(weights), num_classes, in_channels)
    model = info.builder(num_classes, in_channels)
    _load_checked(model, state, Path(weights), name, num_classes)
    return model


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


def _last_module(model: nn.Module, kind: type, what: str, first: bool = False) -> tuple[str, nn.Module]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]
    if not found:
        raise LeenetError(f"{type(model).__name__} has no {what}: replace its layers yourself")
    return found[0] if first else found[-1]


def torchvision_weights(name: str, weights: str | Path | None) -> WeightsEnum | None:
    """The torchvision weights enum member ``weights`` names for backbone ``name``; None for a file.

    Raises:
        LeenetError: ``weights`` reads as an enum name the backbone does not have.
    """
    return None if weights is None else _weights_member(get_backbone_info(name), weights)


def _weights_member(info: BackboneInfo, weights: str | Path) -> WeightsEnum | None:
    """The torchvision enum member ``weights`` names, or None when it names a file."""
    if not isinstance(weights, str) or Path(weights).exists():
        return None
    members = info.weights_enum.__members__ if info.weights_enum is not None else {}
    if weights.upper() in members:
        return members[weights.upper()]
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", weights):  # reads as an enum name, not a path
        if not members:
            raise LeenetError(
                f"{info.name} has no torchvision weights; pass a state-dict file as weights "
                "or use a 224-pixel backbone such as resnet50"
            )
        raise LeenetError(
            f"unknown weights {weights!r} for {info.name} (valid: {', '.join(members)}, or a state-dict file)"
        )
    return None


def weights_in_channels(name: str, weights: str | Path | None) -> int | None:
    """Input channels that ``weights`` were trained on, to feed the data in that form.

    Returns:
        3 for torchvision's weights, the first conv's input channels for a state-dict file,
        None for random init or when the file cannot tell (loading it reports why later).
    """
    if weights is None:
        return None
    info = get_backbone_info(name)
    if _weights_member(info, weights) is not None:
        return 3  # every torchvision classification weight is RGB
    try:
        state = read_state_dict(weights)
    except CheckpointError:
        return None
    with torch.device("meta"):  # only the layer names are needed: build without allocating
        probe = info.builder(1, 3)
    first_conv = _last_module(probe, nn.Conv2d, "nn.Conv2d", first=True)[0] + ".weight"
    kernel = state.get(first_conv)
    return int(kernel.shape[1]) if kernel is not None and kernel.dim() == 4 else None


def _load_torchvision_weights(arch: str, weights: WeightsEnum) -> nn.Module:
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


def _load_checked(
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
    classifier = _last_module(model, nn.Linear, "nn.Linear classifier")[0]
    first_conv = _last_module(model, nn.Conv2d, "nn.Conv2d", first=True)[0]
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


def _transfer(
    info: BackboneInfo, state: dict[str, Tensor], path: Path, num_classes: int, in_channels: int
) -> nn.Module:
    """Load a file from another task: its class and channel counts, then new classifier and stem."""
    with torch.device("meta"):  # only the layer names are needed: build without allocating
        probe = info.builder(1, in_channels)
    classifier = _last_module(probe, nn.Linear, "nn.Linear classifier")[0] + ".weight"
    first_conv = _last_module(probe, nn.Conv2d, "nn.Conv2d", first=True)[0] + ".weight"
    if classifier not in state or first_conv not in state:
        raise CheckpointError(f"{path} does not fit {info.name}: it lacks {classifier} or {first_conv}")
    file_classes, file_channels = state[classifier].shape[0], state[first_conv].shape[1]
    model = info.builder(file_classes, file_channels)
    _load_checked(model, state, path, info.name, file_classes)
    if file_classes != num_classes:
        replace_classifier(model, num_classes)
    adapt_first_conv(model, in_channels, pretrained=True)
    return model
