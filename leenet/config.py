"""Run configuration: frozen dataclasses, validated on construction with messages that name the fix."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

from leenet.catalog import find_dataset
from leenet.errors import LeenetError

# The choices each setting takes (the CLI's `choices=` read these).
HEAD_KINDS = ("pool", "sdn", "deep", "flatten")  # exit heads, see leenet.nn.heads
OBJECTIVES = ("hard", "soft", "predict")  # gate objectives, see GateTrainConfig
LOSS_KINDS = ("error", "ce", "soft_error")  # per-exit losses, see leenet.policy.objective.exit_losses
ALPHA_UNITS = ("range", "raw")
PREDICTOR_SPLITS = ("calib", "train")
PRECISIONS = ("auto", "fp32", "bf16")  # backbone training arithmetic
SCORE_KINDS = ("max_softmax", "entropy")  # confidence-threshold baselines
DEVICES = ("auto", "cpu", "cuda")
COST_UNITS = ("flops", "latency")  # what an exit's cost counts
CASCADE_KINDS = ("off", "detach", "grad")  # head i also reads head i-1's logits, see leenet.nn.combine
ENSEMBLE_KINDS = ("off", "geometric", "linear")  # exit i combines heads 0..i, see leenet.nn.combine
ENGINES = ("torch", "onnx")  # what `leenet predict` routes with, see leenet.predict
BACKBONE_TRAINING = ("frozen", "finetune", "joint")  # after the heads are fitted, see leenet.finetune
JOINT_WEIGHTINGS = ("ramp", "equilibrium")  # how a joint fine-tune balances its exits, see leenet.finetune

TRAIN_SPLIT_BATCH = 2048  # predictor minibatch on the training split when none is given
# Standard errors (of the calibration figure) of slack a budget keeps on calibration. A test
# figure scatters around the calibration one by about sqrt(2) of them (two samples of the same
# size), so 1.5 is about one standard error of that difference: a setting right at the budget
# still holds on test most of the time (benchmarks/budget_hold.py; the figures are in docs/benchmarks/budgets.md).
BUDGET_MARGIN = 1.5
MAX_ALPHAS = 1001  # a sweep trains one set of gates per alpha
MAX_LR = 100.0  # beyond any useful learning rate (1e300 would overflow the optimizer's float32 arithmetic)
MAX_GATE_HIDDEN = 4096  # a gate is a small MLP over a few dozen confidence features


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise a one-line error if it is outside [0, 1]."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        alpha = float("nan")  # not a number at all: the same message
    if not 0.0 <= alpha <= 1.0:  # also false for NaN
        raise LeenetError(
            f"alpha must be in [0, 1] (0 = only accuracy matters, 1 = only compute), got {alpha}"
        )
    return alpha


def check_margin(margin: float) -> float:
    """A budget margin (standard errors of slack) must be a finite number >= 0."""
    if not (margin >= 0 and math.isfinite(margin)):
        raise LeenetError(f"--budget-margin must be a number of standard errors >= 0 (default {BUDGET_MARGIN:g}), "
                          f"got {margin}")
    return margin


@dataclass(frozen=True)
class GateConfig:
    """What a gate sees and how big it is."""

    hidden: int = 16  # width of the gate MLP's hidden layer; 0 = logistic regression
    history: bool = True  # also see earlier exits' max-probabilities and agreement with them
    pooled: bool = False  # also see the globally pooled feature map at this exit
    classes: bool = False  # also see this exit's class probabilities and predicted class (one-hot):
    # how far a confidence can be trusted depends on the class (a sure "shirt" is wrong more often)

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise LeenetError(f"gate hidden width must be >= 0, got {self.hidden}")
        if self.hidden > MAX_GATE_HIDDEN:
            raise LeenetError(f"--gate-hidden {self.hidden} is wider than a gate needs (at most "
                              f"{MAX_GATE_HIDDEN}; 16-64 is typical)")


@dataclass(frozen=True)
class GateTrainConfig:
    """How gates are fit on cached calibration outputs."""

    objective: str = "soft"  # "soft": expected loss; "hard": balanced BCE on per-sample best exits;
    # "predict": each gate predicts its exit's correctness (alpha-free), then per-exit
    # thresholds minimizing the calibration objective are set for each alpha
    loss: str = "ce"  # per-exit loss l_i: "ce" (cross-entropy), "error" (0-1) or "soft_error"
    steps: int = 300  # full-batch Adam steps per alpha
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 1e-4  # AdamW weight decay of the gate MLPs
    crossfit: int = 2  # folds for out-of-fold calibration estimates ("predict" also sets its thresholds
    # on out-of-fold scores); 1 = judge gates on the samples they were fit to
    alpha_units: str = "range"  # "range": loss and cost each divided by its range on calibration
    # (first exit to backbone), see leenet.policy.objective.raw_alpha; "raw": the objective as written
    predictors_on: str = "calib"  # "predict": the split the correctness predictors are fit to;
    # "train": the training split (5x the data; thresholds are still chosen on calibration,
    # where the predictors' scores are then held out)
    batch_size: int = 0  # "predict": minibatch size of predictor fitting; 0 = full batch on the
    # calibration split, TRAIN_SPLIT_BATCH on the training split (full-batch steps over it are slow)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise LeenetError(f"unknown gate objective '{self.objective}' (valid: {', '.join(OBJECTIVES)})")
        if self.loss not in LOSS_KINDS:
            raise LeenetError(f"unknown exit loss '{self.loss}' (valid: {', '.join(LOSS_KINDS)})")
        if self.alpha_units not in ALPHA_UNITS:
            raise LeenetError(f"unknown alpha units '{self.alpha_units}' (valid: {', '.join(ALPHA_UNITS)})")
        if self.predictors_on not in PREDICTOR_SPLITS:
            raise LeenetError(f"unknown predictor split '{self.predictors_on}' (valid: {', '.join(PREDICTOR_SPLITS)})")
        if self.predictors_on != "calib" and self.objective != "predict":
            raise LeenetError("only 'predict' gates can be fit on the training split: use --objective predict")
        if self.batch_size < 0:
            raise LeenetError(f"gate batch size must be >= 0 (0 = full batch), got {self.batch_size}")
        if self.crossfit < 1:
            raise LeenetError(f"gate crossfit folds must be >= 1, got {self.crossfit}")
        if self.steps < 1 or not 0 < self.lr < float("inf"):  # also refuses a NaN lr
            raise LeenetError(f"gate training needs steps >= 1 and a finite lr > 0, got {self.steps} and {self.lr}")
        if not 0 <= self.weight_decay < float("inf"):
            raise LeenetError(f"gate weight decay must be finite and >= 0, got {self.weight_decay}")



@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, where it exits, and what sits at each exit."""

    arch: str | None = None  # backbone registry name; None = the dataset's default
    exits: tuple[str, ...] | None = None  # module names to exit after; None = the backbone's defaults
    head: str | None = None  # exit head: "pool", "sdn", "deep" or "flatten"; None = the dataset's default
    gate: GateConfig | None = None  # gate inputs and width; None = the dataset's default
    weights: str | None = None  # torchvision weights enum name or a file; None = train the backbone
    num_classes: int | None = None  # replace the backbone's classifier for this many classes
    transfer: bool = False  # with weights: train only the (new) classifier, backbone frozen
    cascade: str | None = None  # "off", "detach" or "grad": head i also reads head i-1's logits
    # (trained with the heads; "grad" lets head i's loss train the heads before it); None = dataset default
    ensemble: str | None = None  # "off", "geometric" or "linear": exit i answers with a weighted sum of
    # the log-probabilities of heads 0..i, fit on the calibration split; None = dataset default
    ensemble_final: bool | None = None  # also ensemble the final exit (heads + backbone); None = when it
    # wins on calibration (out of fold)

    def __post_init__(self) -> None:
        if self.head is not None and self.head not in HEAD_KINDS:
            raise LeenetError(f"unknown head '{self.head}' (valid: {', '.join(HEAD_KINDS)})")
        if self.cascade is not None and self.cascade not in CASCADE_KINDS:
            raise LeenetError(f"unknown --cascade '{self.cascade}' (valid: {', '.join(CASCADE_KINDS)})")
        if self.ensemble is not None and self.ensemble not in ENSEMBLE_KINDS:
            raise LeenetError(f"unknown --ensemble '{self.ensemble}' (valid: {', '.join(ENSEMBLE_KINDS)})")
        if self.num_classes is not None and self.num_classes < 2:
            raise LeenetError(f"--num-classes must be at least 2, got {self.num_classes}")
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
        find_dataset(self.dataset)  # an unknown name fails here, before any data or torch is loaded
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
    distill: float | None = None  # weight in [0, 1] of the backbone's softened logits in each head's
    # loss (self-distillation; 0 = labels only); None = dataset default
    distill_temperature: float = 3.0  # softening temperature of that distillation
    gates: GateTrainConfig | None = None  # gate objective and optimizer; None = the dataset's default
    backbone_training: str = "frozen"  # "frozen": the backbone is never changed after its own training;
    # "finetune": fine-tuned alone, then heads fitted frozen (the control); "joint": fine-tuned with its
    # fitted heads on the exits' weighted losses (see leenet.finetune)
    finetune_epochs: float = 0.25  # fine-tune length: a fraction (<1) of the backbone's epochs (of the
    # dataset's default when the backbone came with --weights), or a whole number of epochs (>=1)
    backbone_lr_scale: float = 0.02  # the fine-tune's backbone learning rate as a fraction of head_lr (at 0.1 the
    # first epoch cost the final exit 0.6-0.9 pt on Fashion-MNIST and the guard kept the frozen network)
    joint_weighting: str = "ramp"  # joint: "ramp" (SDN: the early exits' loss weights ramped up linearly) or
    # "equilibrium" (IMTA: every exit weighs 1, each stage gets the mean of its exits' gradients, not their sum)

    def __post_init__(self) -> None:
        if self.backbone_training not in BACKBONE_TRAINING:
            raise LeenetError(f"unknown --backbone-training '{self.backbone_training}' "
                              f"(valid: {', '.join(BACKBONE_TRAINING)})")
        if self.joint_weighting not in JOINT_WEIGHTINGS:
            raise LeenetError(f"unknown --joint-weighting '{self.joint_weighting}' (valid: {', '.join(JOINT_WEIGHTINGS)})")
        size = self.finetune_epochs
        if not (0 < size < 1 or (math.isfinite(size) and size >= 1 and size == int(size))):  # also NaN, inf
            raise LeenetError(f"--finetune-epochs must be a fraction in (0, 1) of the backbone's epochs or a whole "
                              f"number of epochs >= 1, got {size}")
        if not 0 < self.backbone_lr_scale <= 1:  # also NaN
            raise LeenetError(f"--backbone-lr-scale is the backbone's share of the heads' learning rate, in (0, 1] "
                              f"(default 0.02), got {self.backbone_lr_scale}")
        for name in ("epochs", "head_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LeenetError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_LR:  # also NaN
                raise LeenetError(f"--{name.replace('_', '-')} must be a positive number up to {MAX_LR:g}, got {value}")
        if self.distill is not None and not 0 <= self.distill <= 1:  # also NaN
            raise LeenetError(f"--distill is the weight of the backbone's soft targets, in [0, 1] (0 = off), "
                              f"got {self.distill}")
        if not 0 < self.distill_temperature <= 100:  # also NaN
            raise LeenetError(f"--distill-temperature must be a positive number (1-5 is typical), "
                              f"got {self.distill_temperature}")
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
    cost: str = "flops"  # "flops" (portable) or "latency" (every stage, head and gate timed on the run's
    # device at latency_batch: what inference pays there; see leenet.evaluate.latency)
    latency_batch: int = 1  # images per call when the latency cost is measured
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
        if self.cost not in COST_UNITS:
            raise LeenetError(f"unknown --cost '{self.cost}' (valid: {', '.join(COST_UNITS)})")
        if isinstance(self.latency_batch, bool) or not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise LeenetError(f"--latency-batch must be a whole number >= 1, got {self.latency_batch}")
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
