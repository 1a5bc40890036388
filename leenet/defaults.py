"""Per-dataset defaults, and the one place a run's unset (None) settings are filled in.

Chosen by measurement (benchmarks/objective_forms.py on digits, benchmarks/fashion_mnist.py;
docs/benchmarks/): with digits' 287 calibration images the hard-target gates on confidence
features win; with 10k calibration images gates that predict their exit's correctness win,
helped by pooled features behind weak pooled-linear heads but not behind SDN heads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from leenet.config import GateConfig, GateTrainConfig, RunConfig


@dataclass(frozen=True)
class DatasetDefaults:
    """What a run on one dataset uses for every setting left unset."""

    arch: str  # backbone registry name
    epochs: int  # backbone epochs when it is trained here
    lr: float  # backbone peak learning rate
    precision: str  # backbone training arithmetic
    head_epochs: int  # exit-head epochs
    head: str  # exit head kind
    gate: GateConfig  # what gates see
    gate_train: GateTrainConfig  # how gates are fit
    distill: float = 0.0  # weight of the backbone's soft targets in the heads' loss
    cascade: str = "off"  # head i also reads head i-1's logits
    ensemble: str = "off"  # exit i combines heads 0..i (see leenet.nn.combine)


_SMALL_CALIB = {"gate": GateConfig(), "gate_train": GateTrainConfig(objective="hard", loss="ce")}
_LARGE_CALIB = {"gate": GateConfig(pooled=True), "gate_train": GateTrainConfig(objective="predict", loss="error")}
DATASET_DEFAULTS: dict[str, DatasetDefaults] = {
    # 8x8 digit maps lose their shape when pooled: flatten heads see it (measured in docs/benchmarks/).
    "digits": DatasetDefaults("digits_cnn", 40, 0.05, "fp32", 30, "flatten", **_SMALL_CALIB),
    # The benchmark's recipe (benchmarks/fmnist_backbone.py). Deep heads (benchmarks/better_exits.py:
    # +0.43 pt at half the FLOPs, 0.338 instead of 0.486 of the cost within 0.5 pt, on calibration).
    # Its gates predict correctness from class probabilities too, learned on the training images:
    # chosen on calibration by the benchmark, behind SDN heads and again behind deep ones.
    "fashion-mnist": DatasetDefaults(
        "small_resnet", 24, 0.1, "auto", 6, "deep", GateConfig(hidden=32, classes=True),
        GateTrainConfig(objective="predict", loss="error", predictors_on="train", steps=1000)),
    "cifar10": DatasetDefaults("resnet50_cifar", 30, 0.05, "auto", 5, "pool", **_LARGE_CALIB),
    "cifar100": DatasetDefaults("resnet50_cifar", 30, 0.05, "auto", 5, "pool", **_LARGE_CALIB),
    "imagenette": DatasetDefaults("resnet50", 20, 0.05, "auto", 5, "pool", **_LARGE_CALIB),
    "folder": DatasetDefaults("resnet50", 20, 0.05, "auto", 5, "pool", **_LARGE_CALIB),
}


# Hugging Face copies of the built-in datasets take their defaults (a name contains the key).
_HF_ALIASES = (("cifar100", "cifar100"), ("cifar10", "cifar10"), ("imagenette", "imagenette"),
               ("fashion_mnist", "fashion-mnist"), ("fashion-mnist", "fashion-mnist"))


def dataset_defaults(dataset: str) -> DatasetDefaults:
    """What a run on ``dataset`` uses for every setting left unset: a built-in dataset's own, a
    Hugging Face copy of one its (``hf:uoft-cs/cifar10`` → ``cifar10``), anything else ``folder``'s."""
    if dataset in DATASET_DEFAULTS:
        return DATASET_DEFAULTS[dataset]
    if dataset.startswith(("hf:", "hf-local:")):
        name = dataset.split(":", 1)[1].lower()
        alias = next((key for part, key in _HF_ALIASES if part in name), "folder")
        return DATASET_DEFAULTS[alias]
    return DATASET_DEFAULTS["folder"]


def resolve(config: RunConfig) -> RunConfig:
    """``config`` with every setting left unset (None) filled in from its dataset's defaults.

    The backbone is trained for the dataset's epochs without weights or with ``--transfer``,
    and kept as it is (0 epochs) with weights; exits default to the backbone's own. A fine-tune
    length given as a fraction becomes whole epochs: of the backbone's, or of the dataset's
    default epochs when the backbone was kept as it is (at least one).
    """
    # The registry (torch, torchvision) only to fill in exits: the command line builds and checks a
    # config before it loads them.
    from leenet.backbones.registry import get_backbone_info

    d = dataset_defaults(config.data.dataset)
    model, train = config.model, config.train
    arch = model.arch or d.arch
    if train.epochs is not None:
        epochs = train.epochs
    else:
        epochs = d.epochs if model.weights is None or model.transfer else 0
    tune = train.finetune_epochs
    tune = int(tune) if tune >= 1 else max(1, round(tune * (epochs or d.epochs)))
    return replace(
        config,
        model=replace(model, arch=arch, exits=tuple(model.exits or get_backbone_info(arch).default_exits),
                      head=model.head or d.head, gate=model.gate or d.gate, cascade=model.cascade or d.cascade,
                      ensemble=model.ensemble or d.ensemble),
        train=replace(train, epochs=epochs, lr=train.lr or d.lr, precision=train.precision or d.precision,
                      head_epochs=d.head_epochs if train.head_epochs is None else train.head_epochs,
                      gates=train.gates or d.gate_train, distill=d.distill if train.distill is None else train.distill,
                      finetune_epochs=tune),
    )
