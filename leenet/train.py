"""Training with the backbone's weights in play: the backbone itself (when none is given) and
the exit heads (backbone frozen). Gates are fit on cached outputs instead (:mod:`leenet.policy`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import PRECISIONS
from leenet.distributed import Processes, data_parallel, sum_over_ranks, sync_from_main
from leenet.errors import LeenetError
from leenet.nn.model import ExitNet
from leenet.progress import EpochLines, progress_bar
from leenet.resume import EpochCheckpoint

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]  # a fresh pass over a split


def freeze_(module: nn.Module) -> nn.Module:
    """Freeze a module: no gradients, and BatchNorm/Dropout in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, what: str) -> None:
    """Backpropagate ``loss`` and step ``optimizer``, after refusing a loss that is not finite in one
    line naming ``what`` (the backbone, the heads, the fine-tune)."""
    if not torch.isfinite(loss):
        raise LeenetError(
            f"{what} loss became {float(loss.detach())}: lower the learning rate, or check the inputs and "
            f"the starting weights for NaNs"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


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
    checkpoint: EpochCheckpoint | None = None,
    procs: Processes | None = None,
    log: Callable[[str], None] | None = None,
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
        checkpoint: saves the training state after every epoch and, when one was saved
            before, continues after its epoch.
        procs: with several processes, ``batches`` is this process's shard and the model
            trains wrapped in DistributedDataParallel (gradients averaged over processes).
        log: where a line per epoch goes when progress is shown but no bar is (stderr).

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
    history, first = _restore(checkpoint, model, optimizer, schedule)
    procs = procs or Processes()
    trained = data_parallel(model, procs)
    lines = EpochLines("backbone", epochs, progress, log, start=first)
    _train_mode_where_trained(model)
    for epoch in range(first, epochs):
        lines.epoch_start()
        bar = progress_bar(batches(), steps_per_epoch, f"backbone epoch {epoch + 1}/{epochs}", progress)
        sums = _classifier_epoch(trained, bar, optimizer, schedule, device, memory_format if mixed else None)
        total, count, hits, seen = sum_over_ranks(sums, procs)
        history.append(total / max(count, 1))
        _save(checkpoint, epoch, history, model, optimizer, schedule)
        lines.done(epoch, history[-1], f"{hits / max(seen, 1):.4f} (training batches)")
    model.to(memory_format=torch.contiguous_format)
    sync_from_main(model, procs)
    model.eval()
    return history


def _classifier_epoch(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], optimizer, schedule,
                      device: torch.device | str, memory_format: torch.memory_format | None) -> list[float]:
    """One pass of SGD steps (bf16 autocast in ``memory_format`` when given); returns the
    loss sum, the steps, the right answers and the samples seen."""
    device_type = torch.device(device).type
    total, count, hits, seen = 0.0, 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=memory_format is not None):
            logits = model(x).float()
            loss = F.cross_entropy(logits, y)
        optimizer_step(loss, optimizer, "backbone")
        if schedule.last_epoch < schedule.total_steps - 1:
            schedule.step()
        total, count = total + float(loss.detach()), count + 1
        hits, seen = hits + float((logits.detach().argmax(-1) == y).sum()), seen + len(y)
    return [total, count, hits, seen]


def _restore(checkpoint: EpochCheckpoint | None, model: nn.Module, optimizer, schedule) -> tuple[list[float], int]:
    """The loss history and the first epoch to run: after the checkpoint's epoch, if it has one."""
    saved = checkpoint.restore() if checkpoint is not None else None
    if saved is None:
        return [], 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    return list(saved["history"]), int(saved["epoch"])


def _save(checkpoint: EpochCheckpoint | None, epoch: int, history: list[float], model: nn.Module,
          optimizer, schedule) -> None:
    if checkpoint is not None:
        checkpoint.save({"epoch": epoch + 1, "history": history, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})


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
    checkpoint: EpochCheckpoint | None = None,
    procs: Processes | None = None,
    log: Callable[[str], None] | None = None,
    distill: float = 0.0,
    temperature: float = 3.0,
) -> list[float]:
    """Train every exit head in one pass with the backbone frozen.

    The stages get ``requires_grad_(False)`` and stay in eval mode (BatchNorm statistics are
    not touched); one AdamW optimizer with a cosine schedule serves all heads (and the
    network's cascade links, if it has any). With several processes (``procs``) only the
    heads are wrapped in DistributedDataParallel: the frozen stages run under ``no_grad``
    outside it. ``checkpoint`` and ``log`` as in :func:`train_classifier`.

    Each head's loss is ``(1 - distill) * CE(head, labels) + distill * T^2 * KL(backbone_T || head_T)``
    (self-distillation: the backbone's own logits softened by ``temperature`` T, computed in
    the same frozen pass; ``distill`` 0 = labels only).

    Returns:
        Mean summed head loss of each epoch.
    """
    if not 0 <= distill <= 1 or not temperature > 0:  # also NaN
        raise LeenetError(f"distillation needs a weight in [0, 1] and a temperature > 0, got {distill} and {temperature}")
    for stage in net.stages:
        freeze_(stage)
    heads = _HeadLosses(net.heads, net.cascade, distill, temperature)
    optimizer = torch.optim.AdamW(list(heads.parameters()), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    history, first = _restore(checkpoint, heads, optimizer, schedule)
    procs = procs or Processes()
    trained = data_parallel(heads, procs)
    lines = EpochLines("heads", epochs, progress, log, start=first)
    heads.train()
    for epoch in range(first, epochs):
        lines.epoch_start()
        bar = progress_bar(batches(), steps_per_epoch, f"heads epoch {epoch + 1}/{epochs}", progress)
        epoch_sums = _heads_epoch(net, trained, bar, optimizer, schedule, device, teacher=distill > 0)
        total, count, seen, *hits = sum_over_ranks(epoch_sums, procs)
        history.append(total / max(count, 1))
        _save(checkpoint, epoch, history, heads, optimizer, schedule)
        lines.done(epoch, history[-1], " / ".join(f"{h / max(seen, 1):.3f}" for h in hits) + " (training batches)")
    sync_from_main(heads, procs)
    heads.eval()
    return history


def _heads_epoch(net: ExitNet, heads: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], optimizer, schedule,
                 device: torch.device | str, teacher: bool = False) -> list[float]:
    """One pass of head steps; returns the loss sum, the steps, the samples seen and each
    head's right answers."""
    total, count, hits, seen = 0.0, 0, torch.zeros(len(net.heads)), 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, right = heads(*_frozen_features(net, x, teacher=teacher), y)
        optimizer_step(loss, optimizer, "head")
        schedule.step()
        total, count = total + float(loss.detach()), count + 1
        hits, seen = hits + right.cpu(), seen + len(y)
    return [total, count, seen, *hits.tolist()]


def _frozen_features(net: ExitNet, x: Tensor, teacher: bool = False) -> tuple[list[Tensor], Tensor | None]:
    """The input of every early head, the frozen stages' outputs, and with ``teacher`` the
    backbone's logits too (the rest of the stages), all computed without autograd."""
    features, h = [], x
    with torch.no_grad():
        for i in range(len(net.heads)):
            h = net.stages[i](h)
            features.append(h)
        if teacher:
            for stage in net.stages[len(net.heads):]:
                h = stage(h)
    return features, (h.float() if teacher else None)


class _HeadLosses(nn.Module):
    """The early heads (and cascade links) as one module, what DistributedDataParallel wraps:
    the sum of the heads' losses and each head's count of right answers (E-1,)."""

    def __init__(self, heads: nn.ModuleList, cascade: nn.Module | None = None, distill: float = 0.0,
                 temperature: float = 3.0) -> None:
        super().__init__()
        self.heads = heads
        self.cascade = cascade
        self.distill, self.temperature = float(distill), float(temperature)

    def forward(self, features: list[Tensor], teacher: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, right, logits = y.new_zeros((), dtype=torch.float32), [], None
        soft = None if teacher is None else (teacher / self.temperature).log_softmax(-1)
        for i, (head, h) in enumerate(zip(self.heads, features)):
            logits = head(h) if self.cascade is None else self.cascade(i, head(h), logits)
            loss = loss + self.head_loss(logits, y, soft)
            right.append((logits.detach().argmax(-1) == y).sum())
        return loss, torch.stack(right).float() if right else torch.zeros(0)

    def head_loss(self, logits: Tensor, y: Tensor, soft: Tensor | None) -> Tensor:
        """Cross-entropy with the labels, mixed with the KL divergence from the softened backbone."""
        if soft is None or self.distill == 0:
            return F.cross_entropy(logits, y)
        return distilled_loss(logits[:, None], y, soft, self.distill, self.temperature)[0]


def distilled_loss(logits: Tensor, y: Tensor, teacher: Tensor | None, distill: float, temperature: float) -> Tensor:
    """Each exit's loss: ``(1 - distill) * CE(exit, labels) + distill * T^2 * KL(teacher_T || exit_T)``.

    Args:
        logits: (B, E, C) the logits of E exits.
        y: (B,) labels.
        teacher: (B, C) the teacher's log-probabilities at temperature ``T`` (its logits / T,
            log-softmaxed), or None (labels only).
        distill: the teacher's weight in [0, 1].
        temperature: T > 0.

    Returns:
        (E,) each exit's loss, a mean over the batch.
    """
    hard = F.cross_entropy(logits.float().transpose(1, 2), y[:, None].expand(-1, logits.shape[1]),
                           reduction="none").mean(0)  # (E,)
    if teacher is None or distill == 0:
        return hard
    student = (logits.float() / temperature).log_softmax(-1)  # (B, E, C)
    kl = F.kl_div(student, teacher[:, None].expand_as(student), log_target=True, reduction="none").sum(-1).mean(0)
    return (1 - distill) * hard + distill * temperature * temperature * kl
