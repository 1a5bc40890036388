"""From a backbone to a complete, costed :class:`~leenet.nn.model.ExitNet` in one call."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.nn.cost import exit_costs
from leenet.nn.heads import FeatureLayout, backbone_layout
from leenet.nn.model import ExitNet
from leenet.nn.split import split_backbone

BUILD_ATTRIBUTE = "leenet_arch"  # set by leenet.build_backbone on what it builds: the name it built


def attach_exits(
    backbone: nn.Module | Sequence[nn.Module],
    exit_points: Sequence[str] | None = None,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    head: str = "pool",
    gate_config: GateConfig | None = None,
    threshold: float = 0.5,
    layout: FeatureLayout | str | Sequence[FeatureLayout | str] | None = None,
    cascade: str = "off",
) -> ExitNet:
    """Cut ``backbone`` at ``exit_points`` and attach a head and a gate after each cut.

    Args:
        backbone: a ``torch.fx``-traceable classifier, or an explicit list of stages whose
            composition is the classifier (then ``exit_points`` only names the exits).
        exit_points: module names to exit after, in execution order, e.g.
            ``["layer1", "layer2", "layer3"]``.
        input_shape: one image's shape ``(C, H, W)`` at the size the network will see;
            FLOPs are counted at this size.
        num_classes: number of classes of the backbone's classifier.
        head: ``"pool"``, ``"sdn"``, ``"deep"`` or ``"flatten"`` (see :func:`leenet.heads.make_head`).
        gate_config: what the gates see and their width.
        threshold: gate probability at or above which a sample exits.
        layout: how the features at the exits are laid out (``"nchw"``, ``"nhwc"``,
            ``"tokens"``, a :class:`~leenet.nn.heads.FeatureLayout`, or one per exit); None
            detects it: Swin's maps are channels-last, a ViT's tokens start with its class
            token (timm's ``num_prefix_tokens``), see :meth:`ExitNet.from_stages`.
        cascade: "off", "detach" or "grad": each head also reads the previous head's logits
            through a C x C link, counted in its FLOPs (see :class:`leenet.nn.combine.Cascade`).

    Returns:
        An ExitNet on the backbone's device with ``cost`` filled in; heads and gates untrained.
        ``net.backbone_arch`` is the name :func:`leenet.build_backbone` made ``backbone`` from
        (None for other models): what a checkpoint needs to rebuild it.
    """
    if isinstance(exit_points, str):
        raise LeenetError(f"exit_points is a list of module names, e.g. ['{exit_points}'], not a string")
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape):
        raise LeenetError(f"input_shape is one image's shape as positive whole numbers, e.g. (3, 224, 224); "
                          f"got {input_shape!r}")
    shape = tuple(int(n) for n in shape)
    if isinstance(backbone, nn.Module):
        if not exit_points:
            raise LeenetError("give at least one exit point (a module name such as 'layer2')")
        stages = split_backbone(backbone, list(exit_points))
        names = [*exit_points, "final"]
        layout = backbone_layout(backbone) if layout is None else layout
    else:
        if isinstance(backbone, str) or not all(isinstance(m, nn.Module) for m in backbone):
            raise LeenetError("backbone must be an nn.Module or a list of nn.Module stages")
        stages = list(backbone)
        if len(stages) < 2:
            raise LeenetError("an explicit list of stages needs at least two stages (one early exit)")
        names = [*(exit_points or [f"stage{i}" for i in range(len(stages) - 1)]), "final"]
        if len(names) != len(stages):
            raise LeenetError(f"{len(stages)} stages need {len(stages) - 1} exit names, got {len(names) - 1}")
    param = next((p for s in stages for p in s.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, *shape, device=device)
    net = ExitNet.from_stages(
        stages, num_classes=num_classes, example_input=example, head=head,
        gate_config=gate_config, exit_names=names, threshold=threshold, layout=layout, cascade=cascade,
    ).to(device)
    net.backbone_arch = getattr(backbone, BUILD_ATTRIBUTE, None)
    costs = exit_costs(net, example)
    net.cost.copy_(costs.relative.to(net.cost))
    net.head_cost.copy_(costs.relative_heads.to(net.head_cost))
    net.gate_cost.copy_(costs.relative_gates.to(net.gate_cost))
    net.backbone_flops.fill_(costs.backbone_flops)
    return net
