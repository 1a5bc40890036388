"""Run configuration: frozen dataclasses, validated on construction with messages that name the fix."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from leenet.errors import LeenetError
from leenet.evaluate import BUDGET_MARGIN, check_margin
from leenet.heads import HEAD_KINDS, GateConfig
from leenet.objective import check_alpha
from leenet.train import PRECISIONS, GateTrainConfig

DEVICES = ("auto", "cpu", "cuda")


MAX_ALPHAS = 1001  # a sweep trains one set of gates per alpha
MAX_LR = 100.0  # beyond any useful learning rate (1e300 would overflow the optimizer's float32 arithmetic)
MAX_GATE_HIDDEN = 4096  # a gate is a small MLP over a few dozen confidence features


@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, where it exits, and what sits at each exit."""

    arch: str | None = None  # backbone registry name; None = the dataset's default
    exits: tuple[str, ...] | None = None  # module names to exit after; None = the backbone's defaults
    head: str | None = None  # exit head: "pool", "sdn" or "flatten"; None = the dataset's default
    gate: GateConfig | None = None  # gate inputs and width; None = the dataset's default
    weights: str | None = None  # torchvision weights enum name or a file; None = train the backbone
    num_classes: int | None = None  # replace the backbone's classifier for this many classes
    transfer: bool = False  # with weights: train only the (new) classifier, backbone frozen

    def __post_init__(self) -> None:
        if self.head is not None and self.head not in HEAD_KINDS:
            raise LeenetError(f"unknown head '{self.head}' (valid: {', '.join(HEAD_KINDS)})")
        if self.num_classes is not None and self.num_classes < 2:
            raise LeenetError(f"--num-classes must be at least 2, got {self.num_classes}")
        if self.gate is not None and self.gate.hidden > MAX_GATE_HIDDEN:
            raise LeenetError(f"--gate-hidden {self.gate.hidden} is wider than a gate needs (at most "
                              f"{MAX_GATE_HIDDEN}; 16-64 is typical)")
        if self.exits is not None and len(self.exits) == 0:
            raise LeenetError("--exits needs at least one exit point, e.g. --exits layer1,layer2")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split."""

    dataset: str = "digits"  # registry name (see `leenet.data.dataset_names()`)
    data_dir: str | None = None  # folder or archive holding the dataset; None = its default place
    download: bool = False  # fetch the dataset if missing (needs internet)
    calib_size: float = 0.2  # held out of the training data for gates: fraction (<1) or count (>=1)
    image_size: int | None = None  # resize images to this; None = the backbone's input size
    batch_size: int = 128  # training and evaluation batch size

    def __post_init__(self) -> None:
        size = self.calib_size
        if not (0 < size < 1 or (math.isfinite(size) and size >= 1 and size == int(size))):  # also NaN, inf
            raise LeenetError(f"--calib-size must be a fraction in (0, 1) or a whole number of images >= 1, got {size}")
        if self.image_size is not None and self.image_size < 1:
            raise LeenetError(f"--image-size must be at least 1 pixel, got {self.image_size}")
        if self.batch_size < 1:
            raise LeenetError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast each part trains."""

    epochs: int | None = None  # backbone epochs when it is trained here; None = dataset default
    lr: float | None = None  # backbone peak learning rate (SGD, one-cycle); None = dataset default
    precision: str | None = None  # backbone arithmetic: "auto", "fp32" or "bf16"; None = dataset default
    head_epochs: int | None = None  # exit-head epochs; None = dataset default
    head_lr: float = 2e-3  # exit-head learning rate (AdamW, cosine)
    gates: GateTrainConfig | None = None  # gate objective and optimizer; None = the dataset's default

    def __post_init__(self) -> None:
        for name in ("epochs", "head_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LeenetError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_LR:  # also NaN
                raise LeenetError(f"--{name.replace('_', '-')} must be a positive number up to {MAX_LR:g}, got {value}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise LeenetError(f"unknown --precision '{self.precision}' (valid: {', '.join(PRECISIONS)})")


@dataclass(frozen=True)
class RunConfig:
    """One `leenet run`: data, model, training, the alpha sweep, budgets and outputs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    alphas: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(21))  # sweep
    alpha: float | None = None  # the alpha whose gates the saved model uses; None = chosen for you
    target_cost: float | None = None  # budget: mean cost <= this fraction of backbone FLOPs
    max_drop: float | None = None  # budget: accuracy drop <= this fraction (0.005 = 0.5 pt)
    budget_margin: float = BUDGET_MARGIN  # standard errors of slack budgets keep on calibration
    seed: int = 0  # seeds data splits, initialization and training
    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    out: str | None = None  # run directory; None = runs/<dataset>-<arch>-<time>
    overwrite: bool = False  # allow writing into a run directory that already has results
    timing: bool = True  # measure wall-clock throughput and latency
    progress: bool = True  # show progress bars

    def __post_init__(self) -> None:
        if not self.alphas:
            raise LeenetError("--alphas is empty: give a list like 0,0.1,0.2 or a range like 0:1:0.05")
        if len(self.alphas) > MAX_ALPHAS:
            raise LeenetError(f"{len(self.alphas)} alphas, at most {MAX_ALPHAS} are trained: sweep fewer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            raise LeenetError(f"--seed must be a whole number in 0..{2**32 - 1}, got {self.seed}")
        alphas = {check_alpha(a) for a in self.alphas}
        if self.alpha is not None:
            alphas.add(check_alpha(self.alpha))  # the chosen alpha is always trained
        object.__setattr__(self, "alphas", tuple(sorted(alphas)))
        if self.target_cost is not None and self.max_drop is not None:
            raise LeenetError("give one budget, --target-cost or --max-drop, not both")
        if self.target_cost is not None and not (self.target_cost > 0 and math.isfinite(self.target_cost)):
            raise LeenetError(f"--target-cost must be a positive fraction of the backbone's FLOPs, got {self.target_cost}")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise LeenetError(f"--max-drop must be a fraction in [0, 1) (0.005 = 0.5 points), got {self.max_drop}")
        check_margin(self.budget_margin)
        if self.train.epochs == 0 and self.model.weights is None:
            raise LeenetError("--epochs 0 keeps the backbone as it is, which needs --weights (a file or a torchvision "
                              "weights name): without them it would be untrained; drop --epochs 0 to train it here")
        if self.device not in DEVICES:
            raise LeenetError(f"unknown device '{self.device}' (valid: {', '.join(DEVICES)})")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.5"`` or ``"start:stop:step"`` (stop included) → alphas, each checked to be in [0, 1]."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            check_alpha(start), check_alpha(stop)
            if not step > 0:  # also NaN
                raise LeenetError(f"--alphas step must be positive, got {step}")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_ALPHAS:
                raise LeenetError(f"--alphas {text} gives {count} alphas, at most {MAX_ALPHAS} are trained: "
                                  f"use a larger step, e.g. 0:1:0.05")
            values = [round(start + k * step, 10) for k in range(max(count, 0))]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LeenetError(
            f"cannot read --alphas '{text}': give a list like 0,0.1,0.2 or a range like 0:1:0.05"
        ) from None
    return tuple(check_alpha(v) for v in values)
