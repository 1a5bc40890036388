"""Architectures the backbone zoo builds beyond torchvision's own (see :mod:`leenet.zoo`).

Small networks for the embedded and 28-pixel datasets, and 32-pixel CIFAR variants of
torchvision's ResNet-50, VGG-11 and DenseNet-121. All trace with ``torch.fx`` and keep
torchvision's module names, so the same exit points apply.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers


def kaiming_init(model: nn.Module) -> None:
    """torchvision's ResNet/VGG init: He-normal convs (fan out), BN to identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """A 3-block CNN for 8×8 grey digits (about 1.2 M multiply-adds per image).

    Args:
        num_classes: outputs of the classifier.
        in_channels: input image channels.
        width: channels of the first block; the others have 2× and 4× as many.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, width))  # (B, w, 8, 8)
        self.block2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))  # (B, 2w, 4, 4)
        self.block3 = nn.Sequential(  # (B, 4w, 4, 4)
            *_conv_bn_relu(2 * width, 4 * width), *_conv_bn_relu(4 * width, 4 * width)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images → (B, num_classes) logits."""
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: 3×3 stem, three stages of BasicBlocks, global pool, linear.

    At the default ``width=24`` it costs about 45 M multiply-adds per 28×28 image (81 M at ``width=32``).

    Args:
        num_classes: outputs of the classifier.
        in_channels: input image channels.
        width: channels of the stem and the first stage (stages have w, 2w, 4w).
        blocks: BasicBlocks per stage.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 24, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        self.layer1 = self._stage(width, width, blocks, stride=1)  # (B, w, H, W)
        self.layer2 = self._stage(width, 2 * width, blocks, stride=2)  # (B, 2w, H/2, W/2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, stride=2)  # (B, 4w, H/4, W/4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        kaiming_init(self)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or c_in != c_out:
            down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        layers = [BasicBlock(c_in, c_out, stride, down)]
        layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images → (B, num_classes) logits."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGGCifar(nn.Module):
    """torchvision's VGG feature layers with a 32-pixel head.

    At 32×32 the five max-pools leave a 1×1×512 map, so the 224-pixel head (7×7 adaptive
    pool, two 4096-wide layers, 120 M parameters) is replaced by a global pool and one
    linear layer, as in the usual CIFAR VGGs. Module names match torchvision's
    (``features.N``), so the same exit points apply.

    Args:
        num_classes: outputs of the classifier.
        in_channels: input image channels.
        batch_norm: use the ``_bn`` variant of the feature layers.
        config: torchvision's VGG configuration letter (``"A"`` is VGG-11).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True, config: str = "A"
    ) -> None:
        super().__init__()
        self.features = vgg_make_layers(vgg_cfgs[config], batch_norm=batch_norm)
        first = self.features[0]
        self.features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)  # make_layers assumes RGB
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        kaiming_init(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images → (B, num_classes) logits."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet-50 for 32-pixel inputs: 3×3 stride-1 stem, no max-pool (1.3 G MACs)."""
    model = torchvision.models.resnet50(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    kaiming_init(model.conv1)
    return model


def densenet121_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's DenseNet-121 for 32-pixel inputs: 3×3 stride-1 stem, no max-pool (0.89 G MACs)."""
    model = torchvision.models.densenet121(num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    kaiming_init(model.features.conv0)
    return model
