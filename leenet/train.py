"""Training: the backbone (when none is given), the exit heads, and the exit gates."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from leenet.cost import CostModel
from leenet.errors import LeenetError
from leenet.model import ExitNet
from leenet.objective import (balanced_bce, check_alpha, exit_losses, expected_exit_loss, hard_exit_targets,
                              range_scale, raw_alpha)
from leenet.policies import CachedOutputs, first_exit

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]  # a fresh pass over a split
OBJECTIVES = ("hard", "soft", "predict")
ALPHA_UNITS = ("range", "raw")
PREDICTOR_SPLITS = ("calib", "train")
TRAIN_SPLIT_BATCH = 2048  # predictor minibatch on the training split when none is given
# Budget solutions whose mean calibration loss is this close count as equally good (0.05 % of
# accuracy, 5 images in 10k: within noise); the dearest is kept (see _budget_thresholds).
BUDGET_TIE = 5e-4
PRECISIONS = ("auto", "fp32", "bf16")  # training arithmetic of train_classifier
NEVER = 1e4  # a logit shift no gate input overcomes: the gate never fires


@dataclass(frozen=True)
class GateTrainConfig:
    """How gates are fit on cached calibration outputs."""

    objective: str = "soft"  # "soft": expected loss; "hard": balanced BCE on per-sample best exits;
    # "predict": each gate predicts its exit's correctness (alpha-free), then per-exit
    # thresholds minimizing the calibration objective are set for each alpha
    loss: str = "ce"  # per-exit loss l_i: "ce" (cross-entropy) or "error" (0-1)
    steps: int = 300  # full-batch Adam steps per alpha
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 1e-4  # AdamW weight decay of the gate MLPs
    crossfit: int = 2  # folds for out-of-fold calibration estimates ("predict" also sets its thresholds
    # on out-of-fold scores); 1 = judge gates on the samples they were fit to
    alpha_units: str = "range"  # "range": loss and cost each divided by its range on calibration
    # (first exit to backbone), see leenet.objective.raw_alpha; "raw": the objective as written
    predictors_on: str = "calib"  # "predict": the split the correctness predictors are fit to;
    # "train": the training split (5x the data; thresholds are still chosen on calibration,
    # where the predictors' scores are then held out)
    batch_size: int = 0  # "predict": minibatch size of predictor fitting; 0 = full batch on the
    # calibration split, TRAIN_SPLIT_BATCH on the training split (full-batch steps over it are slow)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise LeenetError(f"unknown gate objective '{self.objective}' (valid: {', '.join(OBJECTIVES)})")
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


def freeze_(module: nn.Module) -> nn.Module:
    """Freeze a module: no gradients, and BatchNorm/Dropout in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


def _progress(iterable, total: int | None, desc: str, enabled: bool):
    """A transient progress bar; none when disabled, or when stderr is a file rather than a
    terminal or a notebook (a log would keep a bar's first frame, "0/9", of every fast epoch)."""
    shown = enabled and (getattr(sys.stderr, "isatty", bool)() or "ipykernel" in sys.modules)
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not shown, dynamic_ncols=True)


def _check_loss(loss: Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise LeenetError(
            f"{what} loss became {float(loss.detach())}: lower the learning rate, or check the inputs and "
            f"the starting weights for NaNs"
        )


def train_classifier(
    model: nn.Module,
    batches: Batches,
    *,
    steps_per_epoch: int,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    params: Sequence[nn.Parameter] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    precision: str = "fp32",
) -> list[float]:
    """Train a classifier with SGD + Nesterov momentum and a one-cycle schedule.

    Args:
        model: maps (B, C, H, W) → (B, K).
        batches: returns a fresh (augmented, shuffled) pass over the training split.
        steps_per_epoch: batches per pass, for the schedule.
        epochs: passes over the data.
        params: the parameters to train (default: all); the rest stay as they are.
        precision: ``"fp32"``; ``"bf16"``: bfloat16 autocast and channels-last tensors
            (about 1.9x faster on a CPU with AVX512-BF16; the weights stay float32 and the
            model is handed back in the usual memory format); ``"auto"``: bf16 where the
            device computes it natively (:func:`resolve_precision`), else fp32.

    Returns:
        Mean training loss of each epoch.
    """
    device_type = torch.device(device).type
    mixed = resolve_precision(precision, device_type) == "bf16"
    memory_format = torch.channels_last if mixed else torch.contiguous_format
    model.to(memory_format=memory_format)
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    history = []
    _train_mode_where_trained(model)
    for epoch in range(epochs):
        total, count = 0.0, 0
        bar = _progress(batches(), steps_per_epoch, f"backbone epoch {epoch + 1}/{epochs}", progress)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixed and x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=mixed):
                loss = F.cross_entropy(model(x).float(), y)
            _check_loss(loss, "backbone")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule.last_epoch < schedule.total_steps - 1:
                schedule.step()
            total, count = total + float(loss.detach()), count + 1
        history.append(total / max(count, 1))
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``"auto"`` → ``"bf16"`` on a GPU or CPU with native bfloat16 arithmetic, else ``"fp32"``."""
    if precision not in PRECISIONS:
        raise LeenetError(f"unknown precision '{precision}' (valid: {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        try:  # oneDNN's check for AVX512-BF16 / AMX; emulated bf16 on older CPUs is slower than fp32
            native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
    return "bf16" if native else "fp32"


def _train_mode_where_trained(model: nn.Module) -> None:
    """Train mode, except for modules with parameters all frozen (their BatchNorm stats stay put)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.eval()


def train_heads(
    net: ExitNet,
    batches: Batches,
    *,
    steps_per_epoch: int,
    epochs: int,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[float]:
    """Train every exit head in one pass with the backbone frozen.

    The stages get ``requires_grad_(False)`` and stay in eval mode (BatchNorm statistics are
    not touched); one AdamW optimizer with a cosine schedule serves all heads.

    Returns:
        Mean summed head loss of each epoch.
    """
    for stage in net.stages:
        freeze_(stage)
    params = [p for head in net.heads for p in head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    history = []
    net.heads.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in _progress(batches(), steps_per_epoch, f"heads epoch {epoch + 1}/{epochs}", progress):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = _heads_loss(net, x, y)
            _check_loss(loss, "head")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()), count + 1
        history.append(total / max(count, 1))
    net.heads.eval()
    return history


def _heads_loss(net: ExitNet, x: Tensor, y: Tensor) -> Tensor:
    """Sum of the early heads' cross-entropies; the frozen stages run without autograd."""
    loss = x.new_zeros(())
    h = x
    for i, head in enumerate(net.heads):
        with torch.no_grad():
            h = net.stages[i](h)
        loss = loss + F.cross_entropy(head(h), y)
    return loss


@torch.no_grad()
def collect_outputs(
    net: ExitNet, batches: Iterable[tuple[Tensor, Tensor]], *, total: int | None = None,
    device: torch.device | str = "cpu", progress: bool = True, desc: str = "caching exits",
) -> CachedOutputs:
    """Run the frozen network once over a split and keep every exit's outputs (on the CPU)."""
    was_training = net.training
    net.eval()
    logits, pooled, labels = [], [], []
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    for x, y in _progress(batches, total, desc, progress):
        out = net.forward_all(x.to(device, non_blocking=True))
        logits.append(out.logits.float().cpu())
        pooled.append([p.float().cpu() for p in out.pooled])
        labels.append(y.cpu())
    net.train(was_training)
    if not logits:
        raise LeenetError(f"{desc}: the split is empty; use a larger dataset or a smaller calibration split")
    per_exit = [torch.cat([batch[i] for batch in pooled]) for i in range(len(pooled[0]))]
    return CachedOutputs(torch.cat(logits), per_exit, torch.cat(labels))


def train_gates(
    net: ExitNet, cache: CachedOutputs, alpha: float, config: GateTrainConfig = GateTrainConfig(),
    *, seed: int = 0, inputs: Sequence[Tensor] | None = None,
) -> nn.ModuleList:
    """Fit a fresh copy of ``net``'s gates for one ``alpha`` on cached calibration outputs.

    Args:
        net: supplies the gate architecture and the exit costs (``net.cost``).
        cache: outputs of the frozen network on the calibration split.
        alpha: weight of compute against error, in [0, 1], in ``config.alpha_units``.
        config: objective, loss and optimizer settings.
        seed: seeds the gates' initialization.
        inputs: precomputed ``cache.gate_inputs(net.gate_config)`` (saves time in sweeps).

    Returns:
        The trained gates, in eval mode; ``net`` itself is not modified.
    """
    alpha = check_alpha(alpha)
    if net.num_exits < 2:  # no early exit, nothing to fit
        return copy.deepcopy(net.gates).cpu().eval()
    if config.objective == "predict":
        return fit_gate_sweep(net, cache, [alpha], config, seed=seed, inputs=inputs)[alpha].gates
    inputs = [x.detach() for x in (inputs if inputs is not None else cache.gate_inputs(net.gate_config))]
    gates = _fresh_gates(net, inputs, seed)
    if alpha == 0.0:  # compute is free: the backbone's own exit, exactly (as for "predict")
        for gate in gates:
            gate.enabled.fill_(False)
        return gates.eval()
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)  # (N, E)
    cost = net.cost.detach().float().cpu()
    alpha = objective_alpha(net, losses, alpha, config)
    targets = hard_exit_targets(losses, cost, alpha) if config.objective == "hard" else None
    optimizer = torch.optim.AdamW(gates.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gates.train()
    for _ in range(config.steps):
        scores = _gate_logits(gates, inputs)
        if targets is not None:
            loss = balanced_bce(scores, targets)
        else:
            loss = expected_exit_loss(torch.sigmoid(scores), losses, cost, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _switch_off_unpaid_exits(gates.eval(), inputs, losses, CostModel.of(net), alpha)
    return gates


@torch.no_grad()
def _switch_off_unpaid_exits(gates: nn.ModuleList, inputs: Sequence[Tensor], losses: Tensor,
                             costs: CostModel, alpha: float, threshold: float = 0.5) -> None:
    """Disable, last exit first, every gate whose exit costs more (head included) than it saves.

    Gates trained on the expected loss price every head as always run; a gate that fires
    for few samples can lose more on its head than it saves. A gate is switched off when
    that does not raise the calibration objective at its 0.5 decision (ties switch off).
    """
    fire = torch.stack([gate(x) for gate, x in zip(gates, inputs)], dim=1) >= threshold  # (N, E-1)
    weighted = (1.0 - alpha) * losses

    def objective(enabled: Tensor) -> float:
        exits = first_exit(fire & enabled)
        return float(weighted.gather(1, exits[:, None]).mean() + alpha * costs.routed(enabled)[exits].mean())

    enabled = torch.stack([gate.enabled for gate in gates])
    for i in reversed(range(len(gates))):
        trial = enabled.clone()
        trial[i] = False
        if enabled[i] and objective(trial) <= objective(enabled):
            enabled = trial
    for gate, on in zip(gates, enabled):
        gate.enabled.fill_(bool(on))


def _gate_logits(gates: Sequence[nn.Module], inputs: Sequence[Tensor]) -> Tensor:
    """(N, E-1) pre-sigmoid scores of a set of gates on their inputs (differentiable)."""
    return torch.stack([gate.logit(x) for gate, x in zip(gates, inputs)], dim=1)


def _fresh_gates(net: ExitNet, inputs: Sequence[Tensor], seed: int) -> nn.ModuleList:
    torch.manual_seed(seed)
    gates = copy.deepcopy(net.gates).cpu()
    for gate, x in zip(gates, inputs):
        _reset(gate)
        gate.fit_input_stats(x)
    return gates


def fit_correctness_gates(
    net: ExitNet, cache: CachedOutputs, config: GateTrainConfig = GateTrainConfig(objective="predict"),
    *, seed: int = 0, inputs: Sequence[Tensor] | None = None,
) -> nn.ModuleList:
    """Fit a copy of ``net``'s gates to predict whether their exit is right (no alpha involved).

    Gate ``i``'s output is then an estimate of P(exit ``i`` is correct | its inputs), a
    confidence score that may use the history of earlier exits and pooled features.
    :func:`gates_for_alpha` turns it into exit decisions for any alpha in milliseconds.
    """
    inputs = [x.detach() for x in (inputs if inputs is not None else cache.gate_inputs(net.gate_config))]
    gates = _fresh_gates(net, inputs, seed)
    if len(gates):
        _fit_predictors(gates, inputs, cache.correct.float(), config)
    return gates.eval()


def correctness_scores(
    net: ExitNet, cache: CachedOutputs, config: GateTrainConfig = GateTrainConfig(objective="predict"),
    *, seed: int = 0, inputs: Sequence[Tensor] | None = None,
) -> Tensor | None:
    """Out-of-fold correctness logits (N, E-1) of the calibration samples, or None for in-sample.

    Thresholds chosen on the very scores a predictor was fit to are optimistic: the
    predictor is surest exactly where it memorized the calibration samples, so accuracy
    budgets then fail on new data. With ``config.crossfit = K > 1`` each sample is scored by
    a predictor fit on the other K-1 folds, as a test sample would be.
    """
    if config.crossfit < 2 or net.num_exits < 2:
        return None
    inputs = [x.detach() for x in (inputs if inputs is not None else cache.gate_inputs(net.gate_config))]
    correct = cache.correct.float()
    scores = torch.empty(len(cache.labels), net.num_exits - 1)
    for k, (fit, held) in enumerate(_fold_splits(len(cache.labels), config.crossfit, seed)):
        gates = _fresh_gates(net, [x[fit] for x in inputs], seed + 1 + k)
        _fit_predictors(gates, [x[fit] for x in inputs], correct[fit], config)
        with torch.no_grad():
            scores[held] = _gate_logits(gates, [x[held] for x in inputs])
    return scores


def gates_for_alpha(
    net: ExitNet, predictors: nn.ModuleList, cache: CachedOutputs, alpha: float,
    config: GateTrainConfig = GateTrainConfig(objective="predict"), *, inputs: Sequence[Tensor] | None = None,
    scores: Tensor | None = None,
) -> nn.ModuleList:
    """Copies of correctness-predicting gates whose 0.5 decision minimizes the objective at ``alpha``.

    At ``alpha = 0`` the gates never fire: early exits that beat the final one on the
    calibration split rarely do so on new data, and alpha = 0 promises the backbone's accuracy.

    Args:
        net: supplies the exit costs.
        predictors: from :func:`fit_correctness_gates`; not modified.
        cache: calibration outputs the thresholds are chosen on.
        alpha: weight of compute against error, in [0, 1].
        config: its ``loss`` is the per-exit loss of the objective.
        inputs: precomputed ``cache.gate_inputs(net.gate_config)``.
        scores: (N, E-1) calibration scores to choose thresholds on, from
            :func:`correctness_scores`; None = the predictors' own (in-sample) scores.
    """
    alpha = check_alpha(alpha)
    if not len(predictors):
        return copy.deepcopy(predictors).eval()
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    alpha = objective_alpha(net, losses, alpha, config)
    if scores is None:  # the predictors' own (in-sample) scores
        with torch.no_grad():
            scores = _gate_logits(predictors, inputs if inputs is not None else cache.gate_inputs(net.gate_config))
    _check_scores(scores, cache, net)
    return _shifted(predictors, _alpha_thresholds(net, scores, losses, alpha))


def objective_alpha(net: ExitNet, losses: Tensor, alpha: float, config: GateTrainConfig) -> float:
    """The weight of cost in ``(1 − a)·loss + a·cost`` that ``alpha`` in ``config.alpha_units`` means.

    ``"range"`` divides the loss and the cost by their ranges on the calibration split
    (``losses``, (N, E)): from the backbone's to the first exit's mean loss, and from the first
    exit's cost to the backbone's. Raw, the accuracy differences between exits are so much
    smaller than the cost differences that every alpha above about 0.3 sends everyone out at
    the first exit; in range units a uniform sweep spreads over the whole trade-off.
    """
    alpha = check_alpha(alpha)
    if config.alpha_units == "raw":
        return alpha
    return raw_alpha(alpha, range_scale(losses, net.cost.detach().float().cpu()))


def _shifted(predictors: nn.ModuleList, thresholds: Tensor) -> nn.ModuleList:
    """Copies of the predictors whose logit crosses 0 where the original crosses ``thresholds``.

    A gate whose threshold is :data:`NEVER` is disabled, so its exit's head can be skipped.
    """
    gates = copy.deepcopy(predictors)
    with torch.no_grad():
        for gate, t in zip(gates, thresholds):
            if t >= NEVER:
                gate.enabled.fill_(False)
            else:
                gate.mlp[-1].bias.sub_(t)
    return gates.eval()


def _alpha_thresholds(net: ExitNet, scores: Tensor, losses: Tensor, alpha: float) -> Tensor:
    """(E-1,) logit thresholds on ``scores`` (N, E-1) at which gates should fire for raw ``alpha``."""
    alpha = check_alpha(alpha)
    if alpha == 0.0:  # compute is free: every sample runs to the backbone's own exit
        return torch.full((scores.shape[1],), NEVER)
    return _objective_thresholds(scores, losses, CostModel.of(net), alpha)


@dataclass
class GateFit:
    """The gates for one alpha and what they do to calibration samples they never saw."""

    gates: nn.ModuleList  # fit on the whole calibration split: what the model ships with
    calib_probs: Tensor | None  # (N, E-1) out-of-fold gate probabilities; None = no held-out estimate
    raw_alpha: float = float("nan")  # the weight of cost in the objective as written (see objective_alpha)
    # "predict" only, shared by every alpha of a sweep: the correctness predictors the gates are
    # shifted copies of, and the calibration scores their thresholds were chosen on (what
    # gates_for_budget needs to solve a budget without fitting them again)
    predictors: nn.ModuleList | None = None
    scores: Tensor | None = None


def fit_gate_sweep(
    net: ExitNet, cache: CachedOutputs, alphas: Sequence[float], config: GateTrainConfig = GateTrainConfig(),
    *, seed: int = 0, inputs: Sequence[Tensor] | None = None, progress: bool = False,
    fit_on: CachedOutputs | None = None,
) -> dict[float, GateFit]:
    """Gates for every alpha, each with out-of-fold calibration probabilities.

    Choosing an alpha or a budget on the calibration split needs the gates' behaviour on
    samples they were not fit to: gates judged on their own training samples look surer
    than they are, and a "0.5 point drop" chosen that way becomes 1.5 points on new data.
    With ``config.crossfit = K > 1`` each calibration sample's gate probabilities come from
    gates fit without it: for "predict", the out-of-fold correctness scores against the
    alpha's thresholds; for "soft" and "hard", gates retrained on the other K-1 folds (K more
    fits per alpha, on smaller data). The shipped gates are always fit on the whole split.

    ``fit_on`` (with ``config.predictors_on = "train"``): the outputs "predict" fits its
    correctness predictors to, usually the training split's; every calibration score is then
    held out, and no cross-fitting is needed.
    """
    inputs = [x.detach() for x in (inputs if inputs is not None else cache.gate_inputs(net.gate_config))]
    if (fit_on is not None) != (config.predictors_on == "train"):
        raise LeenetError("predictors fit on the training split need its outputs (fit_on), and only then")
    predictors = None
    if config.objective == "predict" and net.num_exits > 1:
        # thresholds are chosen on these: held out, else (crossfit = 1) the predictors' own
        predictors, choose_on = predictor_scores(net, cache, config, seed=seed, fit_on=fit_on, inputs=inputs)
        held_out_scores = fit_on is not None or config.crossfit > 1
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    raw_config = replace(config, alpha_units="raw")  # the folds use the whole split's units
    fits = {}
    for alpha in _progress(alphas, len(alphas), "gates over alphas", progress):
        raw = objective_alpha(net, losses, alpha, config)
        if predictors is not None:
            shift = _alpha_thresholds(net, choose_on, losses, raw)
            gates = _shifted(predictors, shift)
            held_out = torch.sigmoid(choose_on - shift) if held_out_scores else None
            fits[alpha] = GateFit(gates, held_out, raw, predictors, choose_on)
        else:
            gates = train_gates(net, cache, raw, raw_config, seed=seed, inputs=inputs)
            held_out = _crossfit_probabilities(net, cache, raw, raw_config, seed=seed, inputs=inputs)
            fits[alpha] = GateFit(gates, held_out, raw)
    return fits


def _crossfit_probabilities(net: ExitNet, cache: CachedOutputs, alpha: float, config: GateTrainConfig,
                            *, seed: int, inputs: Sequence[Tensor]) -> Tensor | None:
    """(N, E-1) gate probabilities of each calibration sample from gates trained without its fold."""
    if config.crossfit < 2 or net.num_exits < 2:
        return None
    probs = torch.empty(len(cache.labels), net.num_exits - 1)
    for k, (fit, held) in enumerate(_fold_splits(len(cache.labels), config.crossfit, seed)):
        part = CachedOutputs(cache.logits[fit], [p[fit] for p in cache.pooled], cache.labels[fit])
        gates = train_gates(net, part, alpha, config, seed=seed + 1 + k, inputs=[x[fit] for x in inputs])
        with torch.no_grad():
            probs[held] = torch.stack([g(x[held]) for g, x in zip(gates, inputs)], dim=1)
    return probs


def _fold_splits(n: int, k: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``k`` (fit, held) index pairs of a seeded, balanced split: each sample is held out once."""
    if n < 2:
        raise LeenetError(f"out-of-fold calibration needs at least 2 calibration samples, got {n}: "
                          f"hold out more (--calib-size) or set crossfit=1")
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % k  # (N,)
    return [((fold != i).nonzero().squeeze(1), (fold == i).nonzero().squeeze(1)) for i in range(k)]


def _fit_predictors(gates: nn.ModuleList, inputs: Sequence[Tensor], correct: Tensor,
                    config: GateTrainConfig) -> None:
    """Fit each gate's logit to predict whether its exit is right (plain BCE, full or minibatch)."""
    optimizer = torch.optim.AdamW(gates.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gates.train()
    n = len(correct)
    batch = config.batch_size or (TRAIN_SPLIT_BATCH if config.predictors_on == "train" else n)
    batch = min(batch, n)
    gen = torch.Generator().manual_seed(0)
    order, pos = None, n
    for _ in range(config.steps):
        idx = slice(None)
        if batch < n:
            if pos + batch > n:  # a fresh shuffle for each pass over the data
                order, pos = torch.randperm(n, generator=gen), 0
            idx, pos = order[pos: pos + batch], pos + batch
        scores = _gate_logits(gates, [x[idx] for x in inputs])
        loss = F.binary_cross_entropy_with_logits(scores, correct[idx, : scores.shape[1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _objective_thresholds(scores: Tensor, losses: Tensor, costs: CostModel, alpha: float,
                          grid: int = 64, rounds: int = 3) -> Tensor:
    """(E-1,) score thresholds at which firing minimizes the calibration objective.

    Gate ``i`` fires when its score reaches a threshold ``t_i``; the thresholds minimizing
    the mean of ``(1 − α) l + α cost`` over the calibration samples are found by a shared
    threshold on the probability scale, then coordinate descent over each gate's score
    quantiles, plus always and never firing (every candidate of one gate evaluated at once).
    A gate that never fires saves its head's cost where no later gate needs the head, so
    exits that cost more than they save are switched off. Ties go to the higher threshold,
    so alpha = 0 never exits a sample early without a gain on calibration.
    """
    error_part = (1.0 - alpha) * losses  # (N, E)

    def objective(thresholds: Tensor) -> Tensor:  # (K, E-1) → (K,)
        error, cost = _routed_means(scores, error_part, costs, thresholds)
        return error + alpha * cost

    levels = torch.linspace(-8.0, 8.0, grid)
    shared = torch.cat([levels, torch.tensor([NEVER])])[:, None].expand(-1, scores.shape[1])
    best = shared[_last_argmin(objective(shared))].clone()
    for _ in range(rounds):
        for i in range(scores.shape[1]):
            options = _gate_options(scores[:, i], grid)
            trial = best[None].repeat(len(options), 1)
            trial[:, i] = options
            values = objective(trial)
            best = trial[_last_argmin(values)].clone()
    return best


def predictor_scores(
    net: ExitNet, cache: CachedOutputs, config: GateTrainConfig, *, seed: int = 0,
    fit_on: CachedOutputs | None = None, inputs: Sequence[Tensor] | None = None,
) -> tuple[nn.ModuleList, Tensor]:
    """Correctness predictors and the held-out calibration scores (N, E-1) to set thresholds on.

    Fit on ``fit_on`` (then every calibration score is held out), else on the calibration
    split ``cache`` with out-of-fold scores (in-sample when ``config.crossfit = 1``).
    ``inputs``: precomputed ``cache.gate_inputs(net.gate_config)``.
    """
    inputs = [x.detach() for x in (inputs if inputs is not None else cache.gate_inputs(net.gate_config))]
    if fit_on is not None:
        predictors = fit_correctness_gates(net, fit_on, config, seed=seed)
        scores = None
    else:
        predictors = fit_correctness_gates(net, cache, config, seed=seed, inputs=inputs)
        scores = correctness_scores(net, cache, config, seed=seed, inputs=inputs)
    if scores is None:
        with torch.no_grad():
            scores = _gate_logits(predictors, inputs)
    return predictors, scores


def gates_for_budget(
    net: ExitNet, predictors: nn.ModuleList, cache: CachedOutputs, scores: Tensor, max_cost: float,
    config: GateTrainConfig = GateTrainConfig(objective="predict"),
) -> nn.ModuleList | None:
    """Copies of correctness predictors routing as accurately as possible within a mean cost.

    An alpha sweep only reaches the corners of the calibration trade-off's convex hull; a
    budget between two corners gets the cheaper one. This solves the budget itself: per-gate
    thresholds minimizing the calibration loss with mean cost at most ``max_cost`` (held-out
    ``scores`` from :func:`predictor_scores`). None when even the cheapest routing costs more.
    """
    _check_scores(scores, cache, net)
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    thresholds = _budget_thresholds(scores, losses, CostModel.of(net), _check_budget(max_cost))
    return None if thresholds is None else _shifted(predictors, thresholds)


def budget_sweep(
    net: ExitNet, fit: GateFit, cache: CachedOutputs, budgets: Iterable[float],
    config: GateTrainConfig = GateTrainConfig(objective="predict"), *, progress: bool = False,
) -> dict[float, GateFit]:
    """:func:`gates_for_budget` at every budget, from one "predict" fit of :func:`fit_gate_sweep`.

    An alpha sweep reaches only the corners of the calibration trade-off; solving a budget at
    every step of cost traces the curve between them (the sweep that moves smoothly where a
    fixed alpha jumps). ``fit``: any alpha's :class:`GateFit` (its predictors and held-out
    scores are shared by the sweep). Returns budget → :class:`GateFit` whose ``calib_probs``
    are the held-out routing (None where the sweep's are), leaving out unreachable budgets.
    """
    if fit.predictors is None or fit.scores is None:
        raise LeenetError("a budget sweep needs 'predict' gates (--objective predict)")
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)
    costs, budgets = CostModel.of(net), [_check_budget(b) for b in budgets]
    out = {}
    for budget in _progress(budgets, len(budgets), "budgets", progress):
        thresholds = _budget_thresholds(fit.scores, losses, costs, budget)
        if thresholds is not None:
            held_out = None if fit.calib_probs is None else torch.sigmoid(fit.scores - thresholds)
            out[budget] = GateFit(_shifted(fit.predictors, thresholds), held_out, predictors=fit.predictors,
                                  scores=fit.scores)
    return out


def _check_scores(scores: Tensor, cache: CachedOutputs, net: ExitNet) -> None:
    """Gate scores to choose thresholds on: finite, one row per calibration sample, one column per gate."""
    want = (len(cache.labels), net.num_exits - 1)
    if not isinstance(scores, Tensor) or tuple(scores.shape) != want:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise LeenetError(f"gate scores must be a tensor of shape {want} (calibration samples, gates), got {got}: "
                          f"pass the scores predictor_scores returned for this cache")
    if not torch.isfinite(scores).all():
        raise LeenetError("gate scores contain NaN or infinite values: refit the predictors (predictor_scores)")


def _check_budget(max_cost: float) -> float:
    try:
        max_cost = float(max_cost)
    except (TypeError, ValueError):
        max_cost = float("nan")  # not a number at all: the same message
    if not max_cost > 0.0 or max_cost == float("inf"):  # also NaN
        raise LeenetError(f"a budget is a mean cost > 0 (a share of the backbone's FLOPs, e.g. 0.5), got {max_cost}")
    return max_cost


@torch.no_grad()
def _budget_thresholds(scores: Tensor, losses: Tensor, costs: CostModel, max_cost: float,
                       grid: int = 64, rounds: int = 3, tie: float = BUDGET_TIE) -> Tensor | None:
    """(E-1,) score thresholds of least mean loss with mean cost ≤ ``max_cost``, or None.

    Starts from the best feasible shared threshold (on the logit scale, firing always and
    never included), then coordinate descent over each gate's score quantiles keeping the
    budget. Candidates within ``tie`` (:data:`BUDGET_TIE`) of the least loss count as equally good,
    and the dearest of them wins: the budget is the user's to spend, and on new data later
    exits are the safer bet (thresholds chosen on calibration flatter the early ones).
    """
    def pick(thresholds: Tensor) -> tuple[Tensor, bool]:  # (K, E-1) → best candidate, feasible?
        loss, cost = _routed_means(scores, losses, costs, thresholds)
        over = cost > max_cost * (1 + 1e-6)  # float32 means: a budget of exactly the first exit's cost fits
        loss = torch.where(over, torch.inf, loss)
        tied = loss <= loss.min() + tie + 1e-12
        best = int(torch.argmax(torch.where(tied, cost, -torch.inf)))
        return thresholds[best].clone(), not bool(over[best])

    levels = torch.cat([torch.tensor([-NEVER]), torch.linspace(-8.0, 8.0, 4 * grid + 1), torch.tensor([NEVER])])
    best, feasible = pick(levels[:, None].expand(-1, scores.shape[1]))
    if not feasible:
        return None
    for _ in range(rounds):
        for i in range(scores.shape[1]):
            options = _gate_options(scores[:, i], grid)
            trial = best[None].repeat(len(options) + 1, 1)
            trial[1:, i] = options  # row 0 keeps the current thresholds: the budget stays met
            best, _ = pick(trial)
    return best


def _routed_means(scores: Tensor, losses: Tensor, costs: CostModel, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Mean loss and mean cost, each (K,), of routing by each row of ``thresholds`` (K, E-1).

    A sample leaves at the first gate whose score (N, E-1) reaches its threshold; gates at
    :data:`NEVER` are disabled and their unneeded heads priced as skipped.
    """
    leave = F.pad(scores[None] >= thresholds[:, None, :], (0, 1), value=True)  # (K, N, E)
    exits = leave.int().argmax(-1)  # (K, N) first exit that fires
    cost = costs.routed(thresholds < NEVER)  # (K, E)
    return losses.gather(1, exits.T).mean(0), cost.gather(1, exits).mean(1)


def _gate_options(scores: Tensor, grid: int) -> Tensor:
    """Candidate thresholds of one gate: always fire, ``grid`` quantiles of its scores (N,), never."""
    options = torch.quantile(scores, torch.linspace(0.0, 1.0, grid))
    return torch.cat([torch.tensor([-NEVER]), options, torch.tensor([NEVER])])


def _last_argmin(values: Tensor) -> int:
    """Index of the last minimum: on ties the highest threshold, the one that exits least."""
    return len(values) - 1 - int(values.flip(0).argmin())


def _reset(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()

