"""What LEENet can load and build, by name, without torch: the datasets ``--dataset`` accepts and
the registered backbones, with the descriptions `leenet datasets` and `leenet backbones` list.

:data:`leenet.data.DATASETS` adds each dataset's reader and
:data:`leenet.backbones.registry.BACKBONES` each backbone's builder and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from leenet.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset, or one form of dataset names (``hf:NAME[:CONFIG]``)."""

    description: str  # one line for ``--help`` and listings
    default_image_size: int | None  # None = the native size of the stored images
    prefix: str | None = None  # names starting with it are this form's, e.g. "hf:"; None = one dataset


DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("scikit-learn 8x8 digits, embedded, no files needed (1437 train / 360 test, 10 classes)",
                          None),
    "fashion-mnist": DatasetInfo("Fashion-MNIST idx files, 1x28x28 (60k / 10k, 10 classes)", None),
    "cifar10": DatasetInfo("CIFAR-10 python release, 3x32x32 (50k / 10k, 10 classes)", None),
    "cifar100": DatasetInfo("CIFAR-100 python release, fine labels, 3x32x32 (50k / 10k, 100 classes)", None),
    "imagenette": DatasetInfo("ImageNette 320px ImageFolder tree, 3x224x224 (9469 train / 3925 val, 10 classes)", 224),
    "folder": DatasetInfo("any ImageFolder tree DIR/train/<class>/*, DIR/val/<class>/*, RGB, 224x224 by default", 224),
    "hf:NAME[:CONFIG]": DatasetInfo("a Hugging Face dataset from the offline cache (--download fetches it), "
                                    "e.g. hf:uoft-cs/cifar10; needs pip install 'leenet[hf]'", None, prefix="hf:"),
    "hf-local:DIR[:CONFIG]": DatasetInfo("Hugging Face parquet/arrow files in the Hub's layout, or a save_to_disk "
                                         "folder, e.g. hf-local:~/data/cifar10", None, prefix="hf-local:"),
}


def find_dataset(name: str) -> str:
    """The :data:`DATASET_INFO` key of dataset ``name``: the name itself, or the form it has
    (``hf:uoft-cs/cifar10`` → ``hf:NAME[:CONFIG]``); raises DataError listing the valid ones."""
    for key, info in DATASET_INFO.items():
        if info.prefix is not None and isinstance(name, str) and name.startswith(info.prefix):
            return key
    if name not in DATASET_INFO or DATASET_INFO[name].prefix is not None:  # a form's own name is not a dataset
        raise DataError(f"unknown dataset {name!r} (valid: {', '.join(DATASET_INFO)})")
    return name


@dataclass(frozen=True)
class BackboneCard:
    """What a registered backbone is, apart from its code."""

    description: str  # one line for ``leenet backbones``
    default_exits: tuple[str, ...]  # exit point names used when the user gives none
    input_size: int  # native input height = width in pixels
    imagenet_normalization: bool  # pretrained weights expect ImageNet mean/std inputs


_RESNET_EXITS = ("layer1", "layer2", "layer3")
# features.N after VGG-11's 2nd, 3rd and 4th max-pool (tests check them against the built model)
_VGG11_EXITS = ("features.5", "features.10", "features.15")
_VGG11_BN_EXITS = ("features.7", "features.14", "features.21")
_DENSENET_EXITS = ("features.denseblock1", "features.denseblock2", "features.denseblock3")

BACKBONE_CARDS: dict[str, BackboneCard] = {
    "digits_cnn": BackboneCard("3-block CNN for 8x8 grey digits, 1.2 M MACs", ("block1", "block2"), 8, False),
    "small_resnet": BackboneCard("ResNet, 3 stages of 2 BasicBlocks (24/48/96 wide) for 28-32 px, 45 M MACs at 28 px",
                                 ("layer1.0", "layer1", "layer2", "layer3.0"), 28, False),
    "resnet50": BackboneCard("torchvision ResNet-50 for 224 px, 4.1 G MACs", _RESNET_EXITS, 224, True),
    "vgg11_bn": BackboneCard("torchvision VGG-11 with batch norm for 224 px, 7.6 G MACs", _VGG11_BN_EXITS, 224, True),
    "vgg11": BackboneCard("torchvision VGG-11 for 224 px, 7.6 G MACs", _VGG11_EXITS, 224, True),
    "densenet121": BackboneCard("torchvision DenseNet-121 for 224 px, 2.8 G MACs", _DENSENET_EXITS, 224, True),
    "resnet50_cifar": BackboneCard("ResNet-50, 3x3 stride-1 stem, no max-pool, for 32 px, 1.3 G MACs",
                                   _RESNET_EXITS, 32, False),
    "vgg11_bn_cifar": BackboneCard("VGG-11-BN features, global pool, linear, for 32 px, 153 M MACs",
                                   _VGG11_BN_EXITS, 32, False),
    "vgg11_cifar": BackboneCard("VGG-11 features, global pool, linear, for 32 px, 153 M MACs", _VGG11_EXITS, 32, False),
    "densenet121_cifar": BackboneCard("DenseNet-121, 3x3 stride-1 stem, no max-pool, for 32 px, 0.89 G MACs",
                                      _DENSENET_EXITS, 32, False),
}
