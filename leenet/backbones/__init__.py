"""The backbone registry (name → builder and default exits), its architectures and weights."""

from leenet.backbones.archs import DigitsCNN, SmallResNet, VGGCifar, densenet121_cifar, resnet50_cifar
from leenet.backbones.registry import (
    BACKBONES,
    BackboneInfo,
    backbone_names,
    build_backbone,
    get_backbone_info,
    torchvision_weights,
    weights_in_channels,
)
from leenet.backbones.weights import adapt_first_conv, classifier_parameters, read_state_dict, replace_classifier

__all__ = [
    "BACKBONES", "BackboneInfo", "DigitsCNN", "SmallResNet", "VGGCifar", "adapt_first_conv", "backbone_names",
    "build_backbone", "classifier_parameters", "densenet121_cifar", "get_backbone_info", "read_state_dict",
    "replace_classifier", "resnet50_cifar", "torchvision_weights", "weights_in_channels",
]
