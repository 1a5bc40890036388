"""Better exits from the heads the network already has: cascade links and exit ensembles.

Two ways for an exit to reuse what the exits before it computed (Zero Time Waste, Wójcik et
al. 2023, does both):

* :class:`Cascade`: head ``i``'s logits also read head ``i-1``'s,
  ``l_i = head_i(h_i) + W_i l_{i-1}``. The links train with the heads; ``W_i`` starts at zero,
  so an untrained cascade is the plain heads.
* :class:`ExitEnsemble`: exit ``i`` answers with a weighted sum of the log-probabilities of
  every head up to it (the backbone's own logits too at the final exit, when ``final``),
  ``z_i = sum_{j<=i} w_ij log_softmax(l_j) + b_i``, fit on the calibration split after the
  heads are trained (:func:`fit_ensemble`): geometric (``w >= 0``, a weighted product of
  probabilities) or linear (any ``w``).

Either way exit ``i`` needs every head up to ``i`` (see :func:`leenet.nn.cost.heads_needed`),
and the gates, thresholds, costs and routing all see the combined outputs ``z``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leenet.config import CASCADE_KINDS, ENSEMBLE_KINDS
from leenet.errors import LeenetError


class Cascade(nn.Module):
    """Links from each early head's logits to the next head's: ``l_i = head_i(h_i) + W_i l_{i-1}``.

    Args:
        num_heads: early heads (E-1); there are ``num_heads - 1`` links.
        num_classes: C.
        detach: in training, whether head ``i``'s loss stops at ``l_{i-1}`` ("detach") or also
            trains the heads before it ("grad"). At inference it changes nothing.
    """

    def __init__(self, num_heads: int, num_classes: int, detach: bool = True) -> None:
        super().__init__()
        self.links = nn.ModuleList(nn.Linear(num_classes, num_classes, bias=False) for _ in range(num_heads - 1))
        for link in self.links:
            nn.init.zeros_(link.weight)
        self.detach = bool(detach)

    @property
    def kind(self) -> str:
        return "detach" if self.detach else "grad"

    def forward(self, i: int, logits: Tensor, prev: Tensor | None) -> Tensor:
        """Head ``i``'s cascaded logits from its own (B, C) and head ``i-1``'s cascaded ones (B, C)."""
        if i == 0:
            return logits
        if prev is None:
            raise LeenetError(f"cascaded head {i} needs head {i - 1}'s logits")
        if self.detach and self.training:
            prev = prev.detach()
        return logits + self.links[i - 1](prev)


class ExitEnsemble(nn.Module):
    """Each exit's output as a weighted sum of the log-probabilities of the heads up to it.

    ``weight`` (E, E) is lower-triangular; ``bias`` (E, C). Starting values make exit ``i``
    answer with its own head's log-probabilities (same predictions and confidences as the
    plain head). With ``final`` False the final exit keeps the backbone's own logits.
    """

    def __init__(self, num_exits: int, num_classes: int, kind: str = "geometric", final: bool = True) -> None:
        super().__init__()
        if kind not in ENSEMBLE_KINDS or kind == "off":
            raise LeenetError(f"unknown ensemble kind '{kind}' (valid: geometric, linear)")
        self.kind = kind
        self.final = bool(final)
        self.register_buffer("weight", torch.eye(num_exits))
        self.register_buffer("bias", torch.zeros(num_exits, num_classes))

    @property
    def num_exits(self) -> int:
        return self.weight.shape[0]

    def exit(self, i: int, raw: Tensor) -> Tensor:
        """Exit ``i``'s output (B, C) from the raw logits of heads ``0..i`` (B, i+1, C)."""
        if i == self.num_exits - 1 and not self.final:
            return raw[:, -1]
        logp = raw.float().log_softmax(-1)
        out = (logp * self.weight[i, : i + 1, None]).sum(1) + self.bias[i]
        return out.to(raw.dtype)

    def forward(self, raw: Tensor) -> Tensor:
        """Every exit's output (B, E, C) from every head's raw logits (B, E, C)."""
        return torch.stack([self.exit(i, raw[:, : i + 1]) for i in range(raw.shape[1])], dim=1)


def fit_ensemble(ensemble: ExitEnsemble, raw: Tensor, labels: Tensor, *, steps: int = 300, lr: float = 0.05,
                 weight_decay: float = 1e-3) -> ExitEnsemble:
    """Fit ``ensemble``'s weights and biases to minimize each exit's cross-entropy on (raw, labels).

    Full-batch Adam on every exit at once (the exits' parameters do not interact). Geometric
    weights are kept non-negative (``w = softplus(θ)``); ``weight_decay`` pulls the biases and
    the weights towards the plain head (weight 1 on its own head, 0 elsewhere).

    Args:
        raw: (N, E, C) raw logits of every exit on the calibration split.
        labels: (N,) int64.
    """
    n, exits, classes = raw.shape
    if exits != ensemble.num_exits:
        raise LeenetError(f"the ensemble has {ensemble.num_exits} exits but the outputs have {exits}")
    logp = raw.detach().float().log_softmax(-1)  # (N, E, C)
    mask = torch.ones(exits, exits).tril()
    eye = torch.eye(exits)
    geometric = ensemble.kind == "geometric"
    # softplus(θ) = 1 on the diagonal, about 0.007 elsewhere: starts at the plain heads
    theta = (torch.where(eye.bool(), torch.full_like(eye, 0.5413), torch.full_like(eye, -5.0)) if geometric
             else eye.clone()).requires_grad_(True)
    bias = torch.zeros(exits, classes, requires_grad=True)
    optimizer = torch.optim.Adam([theta, bias], lr=lr)
    labels = labels.to(logp.device)

    def weights() -> Tensor:
        return (F.softplus(theta) if geometric else theta) * mask

    rows = exits if ensemble.final else exits - 1
    for _ in range(steps):
        w = weights()
        z = torch.einsum("njc,ij->nic", logp, w) + bias  # (N, E, C)
        loss = F.cross_entropy(z[:, :rows].reshape(-1, classes), labels.repeat_interleave(rows)) * rows
        loss = loss + weight_decay * ((w - eye * mask).square().sum() + bias.square().sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        w = weights()
        if not ensemble.final:
            w[-1] = eye[-1]
            bias[-1] = 0
        ensemble.weight.copy_(w)
        ensemble.bias.copy_(bias)
    return ensemble


def make_cascade(kind: str, num_heads: int, num_classes: int) -> Cascade | None:
    """A :class:`Cascade` for ``kind`` "detach" or "grad"; None for "off"."""
    if kind not in CASCADE_KINDS:
        raise LeenetError(f"unknown cascade '{kind}' (valid: {', '.join(CASCADE_KINDS)})")
    return None if kind == "off" or num_heads < 2 else Cascade(num_heads, num_classes, detach=kind == "detach")


def calibration_halves(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of ``range(n)`` drawn with ``seed``: what :func:`out_of_fold_accuracy`
    fits on and judges on, each in turn."""
    first, second = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).chunk(2)
    return first, second


def out_of_fold_accuracy(fit: Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]], raw: Tensor, labels: Tensor,
                         seed: int) -> float:
    """Accuracy of the combiner ``fit(raw, labels) -> predict(raw) -> (N,) classes`` on (raw, labels),
    out of fold: each of the :func:`calibration_halves` scored by a fit on the other."""
    first, second = calibration_halves(len(labels), seed)
    right = 0
    for fit_on, judge in ((first, second), (second, first)):
        predict = fit(raw[fit_on], labels[fit_on])
        with torch.no_grad():
            right += int((predict(raw[judge]) == labels[judge]).sum())
    return right / len(labels)


def ensemble_for(raw: Tensor, labels: Tensor, kind: str, final: bool | None = None, *, seed: int = 0,
                 **fit_options) -> ExitEnsemble:
    """An :class:`ExitEnsemble` of ``kind`` fit on (raw, labels), the calibration split's raw logits.

    ``final`` None decides whether to ensemble the final exit too, out of fold: the
    calibration split is halved, an ensemble with the final exit is fit on each half and judged
    on the other, and the final exit is ensembled when that beats the backbone's own accuracy
    on the same samples. ``fit_options`` go to :func:`fit_ensemble`.
    """
    exits, classes = raw.shape[1], raw.shape[2]
    if final is None:
        def fit_final(r: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
            trial = fit_ensemble(ExitEnsemble(exits, classes, kind, final=True), r, y, **fit_options)
            return lambda x: trial.exit(exits - 1, x).argmax(-1)

        backbone = float((raw[:, -1].argmax(-1) == labels).sum()) / len(labels)  # the halves cover every sample
        final = out_of_fold_accuracy(fit_final, raw, labels, seed) > backbone
    return fit_ensemble(ExitEnsemble(exits, classes, kind, final=final), raw, labels, **fit_options)
