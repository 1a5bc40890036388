"""Backbones from outside the registry: ``tv:NAME`` (any torchvision classifier), ``timm:NAME``
(any timm model, with the optional ``leenet[timm]`` extra) and ``module.path:factory`` (a
user's own builder, called with ``num_classes``).

Default exits come from the model's own structure: timm's ``feature_info`` stages; for the
others, the last cut before each downsampling (ResNet's ``layer1..3``, the ``features.N``
stages of MobileNet, EfficientNet or ConvNeXt) or, when the resolution never changes (a
ViT), cuts evenly spaced over the longest run of repeated blocks (its encoder layers).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn

from leenet.backbones.weights import adapt_first_conv, load_torchvision_weights, replace_classifier
from leenet.errors import LeenetError, brief
from leenet.nn.split import cut_shapes

_PROBE_SIZES = (224, 64, 32, 28)  # image sizes tried to find a user model's structure
_MAX_EXITS = 3  # default exits chosen from a model's structure


@dataclass(frozen=True)
class TimmWeights:
    """timm pretrained weights: ``tag`` "" for the model's default, else e.g. ``"augreg_in21k"``.

    Attributes:
        meta: ``{"categories": ...}`` (one entry per class of the weights), as torchvision's weights have.
    """

    model: str
    tag: str
    meta: dict = field(compare=False)


def is_external(name: str) -> bool:
    """Whether ``name`` names a backbone outside the registry (it holds a ``:``)."""
    return isinstance(name, str) and ":" in name


def resolve(name: str) -> tuple[str, Callable[..., nn.Module], int, type | None]:
    """``(description, builder, input size, torchvision weights enum)`` for an external name.

    ``builder(num_classes, in_channels, *, weights=None, image_size=None)`` builds the model.

    Raises:
        LeenetError: an unknown model (close names suggested) or a factory that cannot be imported.
    """
    prefix, _, model = name.partition(":")
    if prefix == "tv":
        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            raise LeenetError(f"unknown torchvision classifier {model!r}{_close(model, known, 'tv:')}")
        return (f"torchvision {model}", functools.partial(build_torchvision, model), 224,
                torchvision.models.get_model_weights(model))
    if prefix == "timm":
        timm = _timm()
        if not timm.is_model(model):
            raise LeenetError(f"unknown timm model {model!r}{_close(model, timm.list_models(), 'timm:')}")
        size = timm.models.get_pretrained_cfg(model).input_size[-1]
        return f"timm {model}", functools.partial(_build_timm, model), int(size), None
    factory = _factory(prefix, model)
    return f"{prefix}.{model}", functools.partial(_build_user, factory, name), 0, None


@functools.lru_cache(maxsize=64)
def default_exits(name: str, builder: Callable[..., nn.Module], input_size: int) -> tuple[str, ...]:
    """Up to three exits from the model's structure (see the module docstring); () if none is found."""
    try:
        try:
            with torch.device("meta"):  # structure only: nothing is allocated or computed
                return _default_exits(name, builder(10, 3), input_size, "meta")
        except LeenetError:
            raise
        except Exception:  # a model whose construction or forward needs real tensors
            return _default_exits(name, builder(10, 3).eval(), input_size, "cpu")
    except LeenetError:  # untraceable, or a factory that fails: building the model says why
        return ()


def _default_exits(name: str, model: nn.Module, input_size: int, device: str) -> tuple[str, ...]:
    info = getattr(model, "feature_info", None)
    if name.startswith("timm:") and info is not None:
        return _from_feature_info(list(info))
    for size in ([input_size] if input_size else _PROBE_SIZES):
        try:
            cuts = cut_shapes(model, torch.zeros(1, 3, size, size, device=device))
        except LeenetError:
            raise
        except Exception:  # a user model that does not take this size
            if device == "meta":
                raise
            continue
        return _from_structure(cuts, size)
    return ()


def weights_for(name: str, weights: str) -> TimmWeights | None:
    """The timm weights ``weights`` names (``"pretrained"``, ``"DEFAULT"`` or a tag) for ``timm:`` models."""
    if not name.startswith("timm:") or not re.fullmatch(r"[A-Za-z0-9_.\-]+", weights) or "." in weights:
        return None
    model = name.partition(":")[2]
    tag = "" if weights.lower() in ("pretrained", "default") else weights
    tags = [n.partition(".")[2] for n in _timm().list_pretrained(f"{model}.*")]
    cfg = _timm().models.get_pretrained_cfg(f"{model}.{tag}" if tag else model) if not tag or tag in tags else None
    if cfg is None:
        raise LeenetError(f"timm has no weights {weights!r} for {model} (valid: pretrained, "
                          f"{', '.join(tags) or 'none'}, or a state-dict file)")
    return TimmWeights(model, tag, {"categories": tuple(range(cfg.num_classes or 1000))})


def build_torchvision(arch: str, num_classes: int, in_channels: int, *, weights=None, image_size: int | None = None
                      ) -> nn.Module:
    """torchvision's ``arch``: ``weights`` (an enum member) loaded before the classifier and the first
    convolution are adapted to ``num_classes`` and ``in_channels``; ``image_size`` for models built for one."""
    size = _size_kwarg(inspect.signature(getattr(torchvision.models, arch)).return_annotation)
    kwargs = {size: image_size} if size and image_size else {}
    if weights is None:
        model = torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
    else:
        model = load_torchvision_weights(arch, weights)
        if len(weights.meta["categories"]) != num_classes:
            replace_classifier(model, num_classes)
    adapt_first_conv(model, in_channels, pretrained=weights is not None)
    return model


def _build_timm(model: str, num_classes: int, in_channels: int, *, weights: TimmWeights | None = None,
                image_size: int | None = None) -> nn.Module:
    timm = _timm()
    fixed = timm.models.get_pretrained_cfg(model).fixed_input_size
    kwargs = {"img_size": image_size} if fixed and image_size else {}
    if weights is None:
        return timm.create_model(model, num_classes=num_classes, in_chans=in_channels, **kwargs)
    full = f"{model}.{weights.tag}" if weights.tag else model
    try:  # timm adapts the classifier and the stem itself
        return timm.create_model(full, pretrained=True, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except Exception as exc:  # hub downloads fail in many ways (offline, gated, missing file)
        raise LeenetError(f"cannot load timm weights {full} ({brief(exc, 100)}): no network? download them "
                          "elsewhere, save model.state_dict() and pass that file as --weights") from None


def _build_user(factory: Callable[..., nn.Module], name: str, num_classes: int, in_channels: int, *,
                weights=None, image_size: int | None = None) -> nn.Module:
    try:
        model = factory(num_classes=num_classes)
    except Exception as exc:  # the user's code: any failure is theirs to see, in one line
        raise LeenetError(f"factory {name} failed when called with num_classes={num_classes} "
                          f"({type(exc).__name__}: {brief(exc, 120)})") from None
    if not isinstance(model, nn.Module):
        raise LeenetError(f"factory {name} returned a {type(model).__name__}, not a torch.nn.Module")
    if in_channels != 3:
        adapt_first_conv(model, in_channels, pretrained=False)
    return model


def _factory(module_name: str, attr: str) -> Callable[..., nn.Module]:
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module_name) or not re.fullmatch(r"[A-Za-z_]\w*", attr):
        raise LeenetError(f"cannot read {module_name}:{attr} as a backbone: use tv:NAME, timm:NAME or "
                          "module.path:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing on import
        raise LeenetError(f"cannot import {module_name} for backbone {module_name}:{attr} "
                          f"({type(exc).__name__}: {brief(exc, 120)}): is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise LeenetError(f"{module_name} has no callable {attr!r}{_close(attr, names, module_name + ':')}")
    return factory


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise LeenetError("timm models need timm: pip install 'leenet[timm]'") from None


def _close(name: str, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""


def _size_kwarg(cls: object) -> str | None:
    if not isinstance(cls, type):
        return None
    params = inspect.signature(cls.__init__).parameters
    return next((p for p in ("image_size", "input_size", "img_size") if p in params), None)


def _from_feature_info(info: list[dict]) -> tuple[str, ...]:
    """timm's stages after the stem (reduction above 2), the last left out; at most three, evenly spread."""
    stages = [f["module"] for f in info if f.get("reduction", 4) > 2][:-1]
    return _spread(stages)


def _from_structure(cuts: list[tuple[list[str], tuple[int, ...]]], size: int) -> tuple[str, ...]:
    """The last shallowest cut (two dots deep at most) at each resolution, the final one left
    out (and the stem's, above size/3, when that leaves two); with no downsampling, cuts spread
    over the longest run of sibling blocks."""
    by_res: dict[int, list[tuple[int, str]]] = {}
    for names, shape in cuts:
        res = _side(shape)
        name = min(names, key=lambda n: n.count("."))
        if res is not None and res > 1 and name.count(".") <= 2:  # 1x1: pooled; deeper: inside a block
            by_res.setdefault(res, []).append((name.count("."), name))
    if len(by_res) > 1:
        ends = [(res, _last_shallowest(items)) for res, items in by_res.items()][:-1]
        past_stem = [name for res, name in ends if res * 3 < size]
        return _spread(past_stem if len(past_stem) >= 2 else [name for _, name in ends])
    siblings: dict[str, list[str]] = {}
    for names, _ in cuts:
        for name in names:
            siblings.setdefault(name.rpartition(".")[0], []).append(name)
    run = max(siblings.values(), key=len, default=[])
    return _spread(run[:-1]) if len(run) > 1 else ()


def _side(shape: tuple[int, ...]) -> int | None:
    """The side of a square feature map (C, S, S) or channels-last (S, S, C); None for others."""
    if len(shape) != 3:
        return None
    if shape[1] == shape[2]:
        return shape[1]
    return shape[0] if shape[0] == shape[1] else None


def _last_shallowest(items: list[tuple[int, str]]) -> str:
    depth = min(d for d, _ in items)
    return [n for d, n in items if d == depth][-1]


def _spread(names: list[str]) -> tuple[str, ...]:
    """At most ``_MAX_EXITS`` of ``names``, evenly spread and ending one step before the end."""
    if len(names) <= _MAX_EXITS:
        return tuple(names)
    n = len(names) + 1
    return tuple(names[n * k // (_MAX_EXITS + 1) - 1] for k in range(1, _MAX_EXITS + 1))
