"""Backbone registry: name → builder, default exit points, input size and weights.

Two small networks for the embedded and 28-pixel datasets, torchvision's ImageNet models
(which can load torchvision's pretrained weights), and 32-pixel CIFAR variants of those
(3×3 stride-1 stem, no early max-pool, random init only; see :mod:`leenet.archs`). Names
with a colon reach outside it: ``tv:NAME``, ``timm:NAME``, ``module.path:factory``
(:mod:`leenet.backbones.external`).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from leenet.backbones import external
from leenet.backbones.archs import DigitsCNN, SmallResNet, VGGCifar, densenet121_cifar, resnet50_cifar
from leenet.backbones.weights import (
    adapt_first_conv,
    classifier_name,
    first_conv_name,
    load_checked,
    read_state_dict,
    replace_classifier,
)
from leenet.catalog import BACKBONE_CARDS, BackboneCard
from leenet.errors import CheckpointError, LeenetError
from leenet.nn.attach import BUILD_ATTRIBUTE


@dataclass(frozen=True)
class BackboneInfo:
    """A registered backbone.

    Attributes:
        name: registry name.
        builder: ``builder(num_classes, in_channels)`` → randomly initialized model
            (external ones also take ``image_size=`` for models built for one size, a ViT).
        default_exits: exit point names used when the user gives none.
        input_size: native input height = width in pixels (0: unknown, the data's own size).
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


def _torchvision(name: str) -> Callable[..., nn.Module]:
    return functools.partial(external.build_torchvision, name)


# name → (builder, torchvision weights enum or None); what each is, its exits and input size: BACKBONE_CARDS
_CODE: dict[str, tuple[Callable[..., nn.Module], type | None]] = {
    "digits_cnn": (DigitsCNN, None),
    "small_resnet": (SmallResNet, None),
    "resnet50": (_torchvision("resnet50"), torchvision.models.ResNet50_Weights),
    "vgg11_bn": (_torchvision("vgg11_bn"), torchvision.models.VGG11_BN_Weights),
    "vgg11": (_torchvision("vgg11"), torchvision.models.VGG11_Weights),
    "densenet121": (_torchvision("densenet121"), torchvision.models.DenseNet121_Weights),
    "resnet50_cifar": (resnet50_cifar, None),
    "vgg11_bn_cifar": (functools.partial(VGGCifar, batch_norm=True), None),
    "vgg11_cifar": (functools.partial(VGGCifar, batch_norm=False), None),
    "densenet121_cifar": (densenet121_cifar, None),
}


def _info(name: str, card: BackboneCard) -> BackboneInfo:
    builder, weights_enum = _CODE[name]  # a card without code fails here, at import
    return BackboneInfo(name, builder, card.default_exits, input_size=card.input_size,
                        imagenet_normalization=card.imagenet_normalization, weights_enum=weights_enum,
                        description=card.description)


BACKBONES: dict[str, BackboneInfo] = {name: _info(name, card) for name, card in BACKBONE_CARDS.items()}
"""The registered backbones by name: builder, default exits, input size and description
(``leenet backbones`` lists them; ``tv:``, ``timm:`` and ``module:factory`` names need no entry)."""


def backbone_names() -> list[str]:
    """Names of the registered backbones, in registry order."""
    return list(BACKBONES)


def get_backbone_info(name: str) -> BackboneInfo:
    """The registry entry for ``name``, or one made for ``tv:NAME``, ``timm:NAME`` or
    ``module.path:factory``; raises LeenetError suggesting close names if unknown."""
    if external.is_external(name):
        return _external_info(name)
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), list(BACKBONES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise LeenetError(f"unknown backbone {name!r} ({hint}valid: {', '.join(BACKBONES)}; or tv:NAME for a "
                          "torchvision classifier, timm:NAME for a timm model, module.path:factory for your own)")
    return BACKBONES[name]


@functools.lru_cache(maxsize=64)
def _external_info(name: str) -> BackboneInfo:
    description, builder, size, weights_enum = external.resolve(name)
    return BackboneInfo(name, builder, external.default_exits(name, builder, size), input_size=size,
                        imagenet_normalization=size > 0, weights_enum=weights_enum, description=description)


def build_backbone(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | Path | None = None,
    transfer: bool = False,
    image_size: int | None = None,
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
        image_size: the input size, for ``tv:``/``timm:`` models built for one size (ViT,
            Swin in timm); other backbones ignore it. For ``timm:`` models, ``weights`` may
            also be ``"pretrained"`` or a timm tag (``"augreg_in21k"``).

    Returns:
        The model, on the CPU, in training mode; its ``leenet_arch`` attribute records
        ``name``, so that a checkpoint of a network built on it can rebuild it.

    Raises:
        LeenetError: unknown backbone or weights name, or the weights cannot be downloaded.
        CheckpointError: the file is missing, unreadable or does not fit the backbone.
    """
    info = get_backbone_info(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LeenetError(f"{arg} must be a positive integer, got {value!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise LeenetError(f"image_size must be a positive integer, got {image_size!r}")
    model = _build(info, num_classes, in_channels, weights, transfer, image_size)
    setattr(model, BUILD_ATTRIBUTE, name)
    return model


def _build(info: BackboneInfo, num_classes: int, in_channels: int, weights: str | Path | None, transfer: bool,
           image_size: int | None) -> nn.Module:
    sized = {"image_size": image_size} if external.is_external(info.name) else {}
    if weights is None:
        return info.builder(num_classes, in_channels, **sized)
    member = _weights_member(info, weights)
    if member is not None:
        return info.builder(num_classes, in_channels, weights=member, **sized)
    state = read_state_dict(weights)
    if transfer:
        return _transfer(info, state, Path(weights), num_classes, in_channels, sized)
    model = info.builder(num_classes, in_channels, **sized)
    load_checked(model, state, Path(weights), info.name, num_classes)
    return model


def torchvision_weights(name: str, weights: str | Path | None) -> WeightsEnum | external.TimmWeights | None:
    """The torchvision weights enum member (for ``timm:`` models, the timm weights) ``weights`` names
    for backbone ``name``; None for a file.

    Raises:
        LeenetError: ``weights`` reads as an enum name the backbone does not have.
    """
    return None if weights is None else _weights_member(get_backbone_info(name), weights)


def _weights_member(info: BackboneInfo, weights: str | Path) -> WeightsEnum | external.TimmWeights | None:
    """The torchvision enum member ``weights`` names, or None when it names a file."""
    if not isinstance(weights, str) or Path(weights).exists():
        return None
    timm_weights = external.weights_for(info.name, weights)
    if timm_weights is not None:
        return timm_weights
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
    first_conv = first_conv_name(probe) + ".weight"
    kernel = state.get(first_conv)
    return int(kernel.shape[1]) if kernel is not None and kernel.dim() == 4 else None


def _transfer(
    info: BackboneInfo, state: dict[str, Tensor], path: Path, num_classes: int, in_channels: int, sized: dict
) -> nn.Module:
    """Load a file from another task: its class and channel counts, then new classifier and stem."""
    with torch.device("meta"):  # only the layer names are needed: build without allocating
        probe = info.builder(1, in_channels)
    classifier = classifier_name(probe) + ".weight"
    first_conv = first_conv_name(probe) + ".weight"
    if classifier not in state or first_conv not in state:
        raise CheckpointError(f"{path} does not fit {info.name}: it lacks {classifier} or {first_conv}")
    file_classes, file_channels = state[classifier].shape[0], state[first_conv].shape[1]
    model = info.builder(file_classes, file_channels, **sized)
    load_checked(model, state, path, info.name, file_classes)
    if file_classes != num_classes:
        replace_classifier(model, num_classes)
    adapt_first_conv(model, in_channels, pretrained=True)
    return model
