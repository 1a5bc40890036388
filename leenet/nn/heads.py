"""Exit heads: features at an exit → class logits.

Every head creates all of its parameters in ``__init__`` from the shape of the features it
will see, so a multi-exit network is complete (and its FLOPs countable) as soon as it is built.

Features come in several layouts (:class:`FeatureLayout`): convolutional maps ``(C, H, W)``,
channels-last maps ``(H, W, C)`` (Swin), token sequences ``(N, D)`` (ViT, possibly led by
class or register tokens) and vectors ``(D,)``. Heads and the gates' pooled features always
pool over space or tokens, never over channels.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leenet.config import HEAD_KINDS
from leenet.errors import LeenetError

LAYOUT_KINDS = ("nchw", "nhwc", "tokens", "flat")  # see FeatureLayout
_NDIM = {"nchw": 3, "nhwc": 3, "tokens": 2, "flat": 1}  # dimensions of one sample's features


@dataclass(frozen=True)
class FeatureLayout:
    """How one sample's features at an exit are laid out.

    Attributes:
        kind: ``"nchw"`` maps (C, H, W); ``"nhwc"`` channels-last maps (H, W, C);
            ``"tokens"`` a sequence (N, D); ``"flat"`` a vector (D,).
        prefix_tokens: for ``"tokens"``, how many tokens lead the patch tokens (a class
            token, distillation or register tokens); they are left out of the average.
    """

    kind: str
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise LeenetError(f"unknown feature layout {self.kind!r} (valid: {', '.join(LAYOUT_KINDS)})")
        if self.prefix_tokens < 0 or (self.prefix_tokens and self.kind != "tokens"):
            raise LeenetError(f"prefix_tokens is a count >= 0 of leading tokens, for 'tokens' only; "
                              f"got {self.prefix_tokens} for {self.kind!r}")

    @classmethod
    def of(cls, layout: FeatureLayout | str | Sequence) -> FeatureLayout:
        """A layout from itself, a kind name (``"tokens"``), or ``[kind, prefix_tokens]`` (checkpoints)."""
        if isinstance(layout, FeatureLayout):
            return layout
        if isinstance(layout, str):
            return cls(layout)
        kind, prefix = layout
        return cls(str(kind), int(prefix))

    @classmethod
    def guess(cls, shape: Sequence[int]) -> FeatureLayout:
        """The layout a per-sample shape suggests without other knowledge: (C, H, W) maps,
        (N, D) tokens (one class token when N - 1, but not N, is a square), (D,) vectors."""
        if len(shape) == 3:
            return cls("nchw")
        if len(shape) == 2:
            n = shape[0]
            return cls("tokens", 1 if not _is_square(n) and _is_square(n - 1) else 0)
        if len(shape) == 1:
            return cls("flat")
        raise LeenetError(f"features of shape {tuple(shape)} per sample have no known layout: an exit needs "
                          "maps (C, H, W), tokens (N, D) or vectors (D,)")

    @property
    def ndim(self) -> int:
        """Dimensions of one sample's features in this layout."""
        return _NDIM[self.kind]

    def check(self, shape: Sequence[int]) -> None:
        """Raise, in one line, when ``shape`` (one sample's) does not have this layout's dimensions."""
        if len(shape) != self.ndim or (self.kind == "tokens" and shape[0] < self.prefix_tokens):
            raise LeenetError(f"features of shape {tuple(shape)} per sample are not {self.describe()}: "
                              "give the exit's layout as one of " + ", ".join(LAYOUT_KINDS))

    def channels(self, shape: Sequence[int]) -> int:
        """Width of the pooled features for one sample's ``shape``."""
        return int(shape[-1] if self.kind in ("nhwc", "tokens") else shape[0])

    def pool(self, features: Tensor) -> Tensor:
        """(B, *shape) → (B, channels): the average over space or over the patch tokens."""
        if self.kind == "nchw":
            return features.flatten(2).mean(-1)
        if self.kind == "nhwc":
            return features.flatten(1, -2).mean(1)
        if self.kind == "tokens":
            patches = features[:, self.prefix_tokens:] if features.shape[1] > self.prefix_tokens else features
            return patches.mean(1)
        return features.flatten(1)

    def to_maps(self, features: Tensor) -> Tensor:
        """(B, *shape) → (B, C, H, W) for a convolution; patch tokens form a square grid."""
        if self.kind == "nchw":
            return features
        if self.kind == "nhwc":
            return features.permute(0, 3, 1, 2)
        patches = features[:, self.prefix_tokens:]  # (B, h*w, D)
        side = math.isqrt(patches.shape[1])
        return patches.transpose(1, 2).reshape(features.shape[0], -1, side, side)

    def map_shape(self, shape: Sequence[int]) -> tuple[int, int, int] | None:
        """(C, H, W) of :meth:`to_maps` for one sample's ``shape``, or None when there is no grid."""
        if self.kind == "nchw":
            return tuple(shape)
        if self.kind == "nhwc":
            return (shape[2], shape[0], shape[1])
        if self.kind == "tokens" and _is_square(shape[0] - self.prefix_tokens):
            side = math.isqrt(shape[0] - self.prefix_tokens)
            return (shape[1], side, side)
        return None

    def describe(self) -> str:
        what = {"nchw": "maps (C, H, W)", "nhwc": "channels-last maps (H, W, C)", "tokens": "tokens (N, D)",
                "flat": "vectors (D,)"}[self.kind]
        return what + (f" led by {self.prefix_tokens} class/register token(s)" if self.prefix_tokens else "")

    def as_list(self) -> list:
        """``[kind, prefix_tokens]``, as checkpoints store it."""
        return [self.kind, self.prefix_tokens]


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def global_pool(features: Tensor, layout: FeatureLayout | None = None) -> Tensor:
    """Average features over space or tokens → (B, channels).

    Without ``layout`` the rank decides: (B, C, H, W) maps, (B, N, D) tokens, (B, D) vectors pass.
    """
    if layout is None:
        layout = FeatureLayout({4: "nchw", 3: "tokens"}.get(features.dim(), "flat"))
    return layout.pool(features)


def _layout(layout: FeatureLayout | str | None, in_shape: Sequence[int]) -> FeatureLayout:
    resolved = FeatureLayout.guess(in_shape) if layout is None else FeatureLayout.of(layout)
    resolved.check(in_shape)
    return resolved


def exit_layouts(
    layout: FeatureLayout | str | Sequence[FeatureLayout | str] | None,
    shapes: Sequence[tuple[int, ...]],
    next_last: Sequence[int | None],
) -> list[FeatureLayout]:
    """The layout of each early exit's features.

    Args:
        layout: one per exit; or one for the backbone, used at every exit whose features
            have its rank (the others are guessed); or None to detect.
        shapes: each exit's per-sample feature shape.
        next_last: for each exit, the width of the last axis the next stage's first layer
            reads (a LayerNorm or Linear), or None: maps whose last axis it is are channels-last.
    """
    if isinstance(layout, Sequence) and not isinstance(layout, str):
        if len(layout) != len(shapes):
            raise LeenetError(f"{len(shapes)} exits need {len(shapes)} layouts, got {len(layout)}: "
                              "give one per exit, or one for the backbone")
        return [FeatureLayout.of(lay) for lay in layout]
    given = None if layout is None else FeatureLayout.of(layout)
    layouts = []
    for shape, width in zip(shapes, next_last):
        guess = FeatureLayout.guess(shape)
        if given is not None and len(shape) == given.ndim:
            guess = given
        elif given is None and guess.kind == "nchw" and width == shape[-1] != shape[0]:
            guess = FeatureLayout("nhwc")
        layouts.append(guess)
    return layouts


def backbone_layout(model: nn.Module) -> FeatureLayout | None:
    """The layout a known model family's features have (None: detect per exit): Swin keeps maps
    channels-last; a ViT's tokens start with class (and register) tokens."""
    if getattr(model, "output_fmt", None) == "NHWC" or _is_torchvision(model, "SwinTransformer"):
        return FeatureLayout("nhwc")
    prefix = getattr(model, "num_prefix_tokens", None)  # timm's ViT family
    if isinstance(prefix, int):
        return FeatureLayout("tokens", prefix)
    if _is_torchvision(model, "VisionTransformer"):
        return FeatureLayout("tokens", 1)
    return None


def _is_torchvision(model: nn.Module, name: str) -> bool:
    """Whether ``model`` is torchvision's model class ``name``, without importing torchvision for
    it (1-2 s): a model can be one only once torchvision is loaded."""
    models = sys.modules.get("torchvision.models")
    return models is not None and isinstance(model, getattr(models, name))


class PooledLinearHead(nn.Module):
    """Average over space or tokens → linear. Cheap, and the default."""

    kind = "pool"

    def __init__(self, in_shape: Sequence[int], num_classes: int, layout: FeatureLayout | str | None = None) -> None:
        super().__init__()
        self.layout = _layout(layout, in_shape)
        self.fc = nn.Linear(self.layout.channels(in_shape), num_classes)

    def pool(self, features: Tensor) -> Tensor:
        """(B, *in_shape) → (B, channels), what a gate with pooled inputs sees."""
        return self.layout.pool(features)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.layout.pool(features))


class ConvHead(nn.Module):
    """SDN-style head: 3×3 conv/BN/ReLU reduction (stride 2 on large maps), avg+max pool, linear.

    Stronger than :class:`PooledLinearHead` on early, low-level features at the price of its
    convolutions, whose FLOPs are counted in the exit cost like everything else. Channels-last
    maps are permuted and patch tokens laid out on their square grid first. ``width``
    channels per block (None: the input channels clamped to [32, 256]); ``strides``, one per
    conv block (None: :meth:`block_strides`).
    """

    kind = "sdn"

    def __init__(self, in_shape: Sequence[int], num_classes: int, layout: FeatureLayout | str | None = None,
                 *, width: int | None = None, strides: Sequence[int] | None = None) -> None:
        super().__init__()
        if len(in_shape) == 1:
            raise LeenetError(
                f"head '{self.kind}' needs 4-D feature maps (B, C, H, W) or tokens but this exit gives shape "
                f"{tuple(in_shape)}: use --head pool or flatten"
            )
        self.layout = _layout(layout, in_shape)
        maps = self.layout.map_shape(in_shape)
        if maps is None:
            raise LeenetError(
                f"head '{self.kind}' needs maps or tokens on a square grid but this exit gives "
                f"{self.layout.describe()} of shape {tuple(in_shape)}: use --head pool or flatten"
            )
        channels, height, _ = maps
        width = width or max(32, min(channels, 256))
        blocks = []
        for stride in strides or self.block_strides(height):
            blocks += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.reduce = nn.Sequential(*blocks)
        self.fc = nn.Linear(2 * width, num_classes)

    @staticmethod
    def block_strides(height: int) -> list[int]:
        """One block, strided 2 on maps larger than 8."""
        return [2 if height > 8 else 1]

    def pool(self, features: Tensor) -> Tensor:
        """(B, *in_shape) → (B, channels), what a gate with pooled inputs sees."""
        return self.layout.pool(features)

    def forward(self, features: Tensor) -> Tensor:
        h = self.reduce(self.layout.to_maps(features))  # (B, W, H', W')
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # (B, 2W)
        return self.fc(pooled)


class DeepConvHead(ConvHead):
    """:class:`ConvHead` with stride-2 blocks until the map is at most 4 wide (28 → 14 → 7 → 4:
    three blocks; 7 → 4: one; one stride-1 block on maps already that small).

    Each block works on a quarter of the previous one's positions, so the depth a shallow
    exit's low-level features need costs little: on the Fashion-MNIST benchmark's two first
    exits (28×28 maps) it lifts calibration accuracy by about 6 points for 0.043 of the
    backbone's FLOPs instead of 0.030, and on 7×7 maps it costs a third of the sdn head
    (``benchmarks/head_capacity.py``).
    """

    kind = "deep"

    def __init__(self, in_shape: Sequence[int], num_classes: int, layout: FeatureLayout | str | None = None,
                 *, width: int | None = None) -> None:
        super().__init__(in_shape, num_classes, layout, width=width)

    @staticmethod
    def block_strides(height: int) -> list[int]:
        strides = []
        while height > 4:
            strides.append(2)
            height = (height + 1) // 2  # a 3×3 conv, padding 1, stride 2
        return strides or [1]


class FlattenLinearHead(nn.Module):
    """Flatten → linear, the original LEENet head (kept for reproduction; large on big maps)."""

    kind = "flatten"

    def __init__(self, in_shape: Sequence[int], num_classes: int, layout: FeatureLayout | str | None = None) -> None:
        super().__init__()
        self.layout = _layout(layout, in_shape)
        self.fc = nn.Linear(math.prod(in_shape), num_classes)

    def pool(self, features: Tensor) -> Tensor:
        """(B, *in_shape) → (B, channels), what a gate with pooled inputs sees."""
        return self.layout.pool(features)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.flatten(1))


_HEADS = {"pool": PooledLinearHead, "sdn": ConvHead, "deep": DeepConvHead, "flatten": FlattenLinearHead}
HEAD_TYPES = tuple(_HEADS.values())  # the heads make_head builds


def make_head(
    kind: str, in_shape: Sequence[int], num_classes: int, layout: FeatureLayout | str | None = None
) -> nn.Module:
    """Build an exit head.

    Args:
        kind: ``"pool"`` (average over space or tokens → linear), ``"sdn"`` (conv reduction →
            pool → linear), ``"deep"`` (stride-2 conv blocks down to a 4×4 map → pool → linear) or ``"flatten"``
            (flatten → linear, the original LEENet head).
        in_shape: shape of one sample's features at this exit, e.g. ``(C, H, W)``, ``(N, D)``, ``(D,)``.
        num_classes: number of output logits.
        layout: how ``in_shape`` is laid out; None guesses from its rank (:meth:`FeatureLayout.guess`).

    Returns:
        The head; its ``kind``, ``layout`` and ``pool(features)`` describe what it reads.
    """
    if kind not in _HEADS:
        raise LeenetError(f"unknown head '{kind}' (valid: {', '.join(HEAD_KINDS)})")
    return _HEADS[kind](in_shape, num_classes, layout)
