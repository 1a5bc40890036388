"""Fine-tuning the backbone once its exits are fitted (``--backbone-training finetune`` or ``joint``).

``joint`` trains the backbone together with its exit heads on a weighted sum of the exits'
losses: the early exits' weights ramp up linearly as in SDN (Kaya et al., 2019) and the final exit
weighs 1 throughout, or (``equilibrium``) every exit weighs 1 and each stage receives the mean of
the gradients of the exits at and after it instead of their sum, IMTA's gradient equilibrium (Li et
al., 2019). The early exits may distill the final exit's softened logits, the backbone learns at a
fraction of the heads' learning rate, and BatchNorm is in train mode. ``finetune``
is the fair control: the same backbone, epochs, optimizer, learning rate, augmentation and seeds
on the final exit's loss alone (the heads are fitted frozen on it afterwards), so that a gain of
``joint`` is not just more training. Either way the calibration split decides which epoch is
kept, with the final exit guarded (:func:`choose_epoch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leenet.config import JOINT_WEIGHTINGS, TrainConfig
from leenet.distributed import Processes, broadcast, data_parallel, sum_over_ranks, sync_from_main
from leenet.errors import LeenetError
from leenet.nn.model import ExitNet
from leenet.progress import EpochLines, progress_bar
from leenet.resume import EpochCheckpoint
from leenet.train import Batches, distilled_loss, freeze_, optimizer_step

RAMP_START = 0.01  # every early exit's loss weight at the first step (SDN's)
RAMP_DEPTH = 0.9  # the deepest early exit's weight at the last step; exit i's is RAMP_DEPTH * (i + 1) / (E - 1)
FINAL_EXIT_TOLERANCE = 0.001  # a kept epoch's final exit is at most 0.1 pt below its accuracy before, on calibration
ROUNDING = 1e-9  # accuracies are fractions of whole images: closer figures are equal
WEIGHT_DECAY = 1e-4  # AdamW's, as the heads' own training


def ramp_weights(progress: float, num_exits: int) -> Tensor:
    """(E,) the loss weight of each exit ``progress`` (in [0, 1]) of the way through the fine-tune.

    Early exit ``i`` of ``E - 1`` ramps linearly from :data:`RAMP_START` to
    ``RAMP_DEPTH * (i + 1) / (E - 1)`` (SDN's 0.15, 0.3, ..., 0.9 for six exits): deeper exits
    weigh more, and the fitted heads pull on the backbone gently at first. The final exit weighs 1.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    early = num_exits - 1
    target = RAMP_DEPTH * torch.arange(1, early + 1, dtype=torch.float32) / max(early, 1)
    return torch.cat([RAMP_START + (target - RAMP_START) * progress, torch.ones(1)])


def weighted_exit_loss(logits: Tensor, y: Tensor, weights: Tensor, distill: float = 0.0,
                       temperature: float = 3.0) -> Tensor:
    """``sum_i weights[i] * loss_i`` over the exits (a scalar).

    The early exits' losses are :func:`leenet.train.distilled_loss` with the final exit's own
    logits, detached and softened by ``temperature``, as the teacher (``distill`` 0: labels only);
    the final exit learns from the labels alone.

    Args:
        logits: (B, E, C) every exit's logits, the final exit's last.
        y: (B,) labels.
        weights: (E,) each exit's weight (:func:`ramp_weights`).
    """
    teacher = None
    if distill > 0:
        teacher = (logits[:, -1].detach().float() / temperature).log_softmax(-1)  # (B, C)
    early = distilled_loss(logits[:, :-1], y, teacher, distill, temperature)  # (E-1,)
    final = distilled_loss(logits[:, -1:], y, None, 0.0, temperature)  # (1,)
    return (weights.to(early.dtype) * torch.cat([early, final])).sum()


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale`` on the way back."""
    return _ScaleGradient.apply(x, scale)


@dataclass(frozen=True)
class EpochChoice:
    """The fine-tune epoch kept (0: the network before the fine-tune) and why, in one line."""

    epoch: int
    fell_back: bool  # no epoch kept the final exit within the tolerance
    message: str


def choose_epoch(final: Tensor, early: Tensor | None = None,
                 tolerance: float = FINAL_EXIT_TOLERANCE) -> EpochChoice:
    """The epoch to keep, from calibration accuracies before the fine-tune (row 0) and after each epoch.

    An epoch qualifies when its final exit is at most ``tolerance`` below its accuracy before the
    fine-tune (row 0 qualifies). Of those, the one with the best mean early-exit accuracy is kept
    (``early`` given: the joint fine-tune), or the best final exit (the backbone fine-tuned alone),
    the earliest on ties: a fine-tuned epoch is kept only when it beats the network as it was, and
    epoch 0 (that network) is the fall-back.

    Args:
        final: (T+1,) the final exit's calibration accuracy.
        early: (T+1, E-1) the early exits' calibration accuracy, or None.
    """
    final = final.double()
    score, what = (final, "final exit") if early is None else (early.double().mean(1), "mean early-exit accuracy")
    ok = final >= final[0] - tolerance - ROUNDING  # (T+1,)
    epoch, epochs = _first_best(torch.where(ok, score, -torch.inf)), len(final) - 1
    within = f"within {100 * tolerance:.1f} pt of its {100 * float(final[0]):.2f} %"
    if epoch > 0:
        return EpochChoice(epoch, False, f"kept epoch {epoch}/{epochs}: the best {what} on calibration "
                                         f"({100 * float(score[epoch]):.2f} %, {100 * float(score[0]):.2f} % before) of "
                                         f"the epochs whose final exit stayed {within} (it has "
                                         f"{100 * float(final[epoch]):.2f} %)")
    if not bool(ok[1:].any()):
        best = int(final[1:].argmax()) + 1
        return EpochChoice(0, True, f"no fine-tuned epoch kept the final exit {within} on calibration (best "
                                    f"{100 * float(final[best]):.2f} %, epoch {best}/{epochs}): kept the network as it "
                                    f"was before the fine-tune")
    best = _first_best(torch.where(ok[1:], score[1:], -torch.inf)) + 1
    return EpochChoice(0, True, f"no fine-tuned epoch whose final exit stayed {within} beat the {what} before "
                                f"the fine-tune on calibration ({100 * float(score[0]):.2f} %; best "
                                f"{100 * float(score[best]):.2f} %, epoch {best}/{epochs}): kept the network as it was")


def _first_best(scores: Tensor) -> int:
    """The first index of the highest of ``scores`` (T,), ties within rounding included."""
    return int((scores >= scores.max() - ROUNDING).nonzero()[0])


class _ExitLosses(nn.Module):
    """The stages, and for a joint fine-tune the heads and cascade links, as one module (what
    DistributedDataParallel wraps): the weighted exits' loss."""

    def __init__(self, net: ExitNet, joint: bool, distill: float, temperature: float,
                 equilibrium: bool = False) -> None:
        super().__init__()
        self.stages = net.stages
        self.heads = net.heads if joint else None
        self.cascade = net.cascade if joint else None
        self.distill, self.temperature = float(distill), float(temperature)
        self.equilibrium = equilibrium and joint

    @property
    def num_exits(self) -> int:
        """Exits trained: every exit when joint, else the final one only."""
        return len(self.stages) if self.heads is not None else 1

    def exit_logits(self, x: Tensor) -> Tensor:
        """(B, E', C) the trained exits' logits, the final exit's last. With gradient equilibrium
        stage ``i``'s output passes back the mean of the gradients of the ``E - i`` exits from
        ``i`` on: their sum is divided by ``E - i`` there, and the deeper exits' mean, arriving
        from stage ``i + 1``, is multiplied back into a sum first (IMTA's rescaling)."""
        logits, h = [], x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if self.heads is not None and i < len(self.heads):
                later = len(self.stages) - i  # exits from this one on
                if self.equilibrium:
                    h = scale_gradient(h, 1.0 / later)
                out = self.heads[i](h)
                logits.append(out if self.cascade is None else self.cascade(i, out, logits[-1] if logits else None))
                if self.equilibrium:
                    h = scale_gradient(h, later - 1.0)
        return torch.stack([*logits, h], 1)

    def weights(self, progress: float) -> Tensor:
        """(E',) the exits' loss weights ``progress`` of the way through: every exit 1 with gradient equilibrium."""
        return torch.ones(self.num_exits) if self.equilibrium else ramp_weights(progress, self.num_exits)

    def forward(self, x: Tensor, y: Tensor, weights: Tensor) -> Tensor:
        return weighted_exit_loss(self.exit_logits(x).float(), y, weights, self.distill, self.temperature)


@torch.no_grad()
def _calib_accuracy(model: _ExitLosses, batches: Batches, device: torch.device | str, procs: Processes) -> list[float]:
    """(E',) each trained exit's accuracy on the calibration split, in eval mode (rank 0's, on every rank)."""
    accuracy = None
    if procs.is_main:
        model.eval()
        hits, seen = torch.zeros(model.num_exits, dtype=torch.float64), 0
        for x, y in batches():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            hits += (model.exit_logits(x).argmax(-1) == y[:, None]).sum(0).cpu().double()
            seen += len(y)
        accuracy = (hits / max(seen, 1)).tolist()
    model.train()
    return broadcast(accuracy, procs)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def finetune_backbone(
    net: ExitNet, batches: Batches, calib: Batches, *, steps_per_epoch: int, epochs: int, joint: bool,
    lr: float = 2e-3, backbone_lr_scale: float = TrainConfig.backbone_lr_scale, distill: float = 0.0,
    temperature: float = 3.0,
    weighting: str = "ramp", device: torch.device | str = "cpu", precision: str = "fp32", progress: bool = True,
    checkpoint: EpochCheckpoint | None = None, procs: Processes | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fine-tune ``net``'s backbone, with its heads (``joint``) or alone, and keep the epoch :func:`choose_epoch` picks.

    One AdamW optimizer with a cosine schedule: the heads (and cascade links) at ``lr``, the
    stages at ``lr * backbone_lr_scale``; every trained module in train mode (BatchNorm
    statistics move). The calibration split (``calib``, unaugmented) is measured before the
    first epoch and after each; the network ends in the kept epoch's state, frozen.

    Args:
        net: the network; with ``joint`` its heads already fitted on the frozen backbone.
        batches: returns a fresh (augmented, shuffled) pass over the training split.
        steps_per_epoch: batches per pass, for the schedule.
        checkpoint: saves the state after every epoch, as in :func:`leenet.train.train_heads`.
        procs: the distributed processes, as in :func:`leenet.train.train_heads`.
        log: receives one line per epoch.
        distill: the early exits' weight on the final exit's softened logits (joint only).
        weighting: joint only: ``"ramp"`` (:func:`ramp_weights`) or ``"equilibrium"`` (every exit
            weighs 1, IMTA's gradient equilibrium: see ``_ExitLosses.exit_logits``).
        precision: ``"fp32"`` or ``"bf16"`` (autocast), already resolved.

    Returns:
        The fine-tune's record (plain data): its settings, each epoch's calibration accuracies
        and the epoch kept (``backbone.training.fine_tune`` of results.json).
    """
    if epochs < 1:
        raise LeenetError(f"a fine-tune needs at least one epoch, got {epochs}")
    if weighting not in JOINT_WEIGHTINGS:
        raise LeenetError(f"unknown weighting '{weighting}' (valid: {', '.join(JOINT_WEIGHTINGS)})")
    model = _ExitLosses(net, joint, distill if joint else 0.0, temperature, equilibrium=weighting == "equilibrium")
    model.requires_grad_(True)
    total = max(1, epochs * steps_per_epoch)
    optimizer, schedule = _optimizer(model, lr, backbone_lr_scale, total)
    procs = procs or Processes()
    run = _Run(model, optimizer, schedule, checkpoint)
    if run.epoch == 0:
        run.calib.append(_calib_accuracy(model, calib, device, procs))
        run.best = _snapshot(model)
    trained = data_parallel(model, procs)
    name = "joint" if joint else "finetune"
    lines = EpochLines(name, epochs, progress, log, start=run.epoch)
    mixed = precision == "bf16"
    model.train()
    for epoch in range(run.epoch, epochs):
        lines.epoch_start()
        bar = progress_bar(batches(), steps_per_epoch, f"{name} epoch {epoch + 1}/{epochs}", progress)
        loss_sum, count = sum_over_ranks(
            _epoch(trained, bar, optimizer, schedule, device, mixed, epoch * steps_per_epoch, total), procs)
        sync_from_main(model, procs)
        run.end_epoch(epoch + 1, loss_sum / max(count, 1), _calib_accuracy(model, calib, device, procs), joint)
        lines.done(epoch, run.history[-1], "calibration " + " / ".join(f"{a:.3f}" for a in run.calib[-1]))
    choice = run.choice(joint)
    model.load_state_dict(run.best)
    freeze_(net.stages)
    net.heads.eval()
    if log is not None and procs.is_main:
        log(f"{name}: {choice.message}")
    return {"mode": name, "epochs": epochs, "backbone_lr": lr * backbone_lr_scale, "head_lr": lr if joint else None,
            "distill": model.distill if joint else None, "weighting": weighting if joint else None,
            "chosen_epoch": choice.epoch, "fell_back": choice.fell_back,
            "message": choice.message, "final_accuracy": [row[-1] for row in run.calib],
            "early_accuracy": [row[:-1] for row in run.calib] if joint else None, "train_loss": list(run.history)}


def _optimizer(model: _ExitLosses, lr: float, backbone_lr_scale: float, total: int):
    """AdamW with the stages at ``lr * backbone_lr_scale`` and the heads (and cascade links) at
    ``lr``, and a cosine schedule over ``total`` steps."""
    groups = [{"params": list(model.stages.parameters()), "lr": lr * backbone_lr_scale}]
    heads = [p for m in (model.heads, model.cascade) if m is not None for p in m.parameters()]
    if heads:
        groups.append({"params": heads, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


class _Run:
    """A fine-tune's progress (epochs done, losses, calibration rows, the kept epoch's weights),
    restored from and saved to its epoch checkpoint."""

    def __init__(self, model: nn.Module, optimizer, schedule, checkpoint: EpochCheckpoint | None) -> None:
        self.model, self.optimizer, self.schedule, self.checkpoint = model, optimizer, schedule, checkpoint
        self.epoch, self.history, self.calib, self.best = 0, [], [], None
        saved = checkpoint.restore() if checkpoint is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            self.epoch, self.history, self.calib, self.best = (int(saved["epoch"]), list(saved["history"]),
                                                               list(saved["calib"]), saved["best"])

    def choice(self, joint: bool) -> EpochChoice:
        rows = torch.tensor(self.calib, dtype=torch.float64)  # (T+1, E')
        return choose_epoch(rows[:, -1], rows[:, :-1] if joint else None)

    def end_epoch(self, epoch: int, loss: float, calib: list[float], joint: bool) -> None:
        """Record epoch ``epoch`` (1-based), keep its weights if it is the choice so far, save the state."""
        self.epoch = epoch
        self.history.append(loss)
        self.calib.append(calib)
        if self.choice(joint).epoch == epoch:  # the first best: a later epoch replaces it only when better
            self.best = _snapshot(self.model)
        if self.checkpoint is not None:
            self.checkpoint.save({"epoch": epoch, "history": self.history, "calib": self.calib, "best": self.best,
                                  "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                  "schedule": self.schedule.state_dict()})


def _epoch(model: nn.Module, batches, optimizer, schedule, device: torch.device | str, mixed: bool, step: int,
           total: int) -> list[float]:
    """One pass of steps from global step ``step`` of ``total`` (for the ramp); returns the loss sum and the steps."""
    device_type = torch.device(device).type
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    loss_sum, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        weights = inner.weights((step + count) / max(1, total - 1)).to(x.device)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=mixed):
            loss = model(x, y, weights)
        optimizer_step(loss, optimizer, "fine-tune")
        schedule.step()
        loss_sum, count = loss_sum + float(loss.detach()), count + 1
    return [loss_sum, count]
