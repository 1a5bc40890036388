"""The exit policy refit on what actually runs: the decision threshold, chosen on the int8 graphs' outputs.

Quantization moves every exit's logits a little, and the gates (float32, unchanged) then read
inputs they were not fit on: at the float32 threshold the int8 network may exit at other rates.
The refit chooses the decision threshold again on the calibration split's exit outputs collected
through the int8 graphs: the most accurate routing (least mean loss of the run's gate objective)
whose mean cost stays within what the float32 policy spends on the same images. It is the
library's one threshold search (:func:`leenet.policy.thresholds.budget_thresholds`) for a budget,
with one threshold shared by every gate (``rounds=0``): the gates' own per-exit shifts, set on
float32 outputs, stay in their graphs, and the runtime compares each exit probability with the
manifest's one threshold, so an int8 export routes with the same runner, and server, unchanged.
The saved threshold is kept where it is as good within calibration noise. Why hold the cost
rather than re-solve the saved alpha, and why one threshold: docs/int8.md.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leenet.config import BUDGET_MARGIN
from leenet.errors import LeenetError
from leenet.evaluate.compare import paired_stderr
from leenet.nn.cost import CostModel
from leenet.policy.objective import exit_losses
from leenet.policy.simulate import first_exit
from leenet.policy.thresholds import ALWAYS, BUDGET_TIE, budget_thresholds, routed_means
from leenet.report.results import Results

REFIT = "shared threshold, float32 calibration cost held"  # what the manifest's quantization.refit records


@dataclass(frozen=True)
class SavedPolicy:
    """The saved model's setting, what the refit keeps."""

    alpha: float  # the saved alpha, as the run gave it
    loss: str  # the per-exit loss of the run's gate objective: "error", "ce" or "soft_error"
    threshold: float  # the saved decision threshold (on the float32 gates)

    @classmethod
    def of_results(cls, results: Results) -> SavedPolicy:
        """The saved setting of a run, from its ``results.json``.

        Raises:
            LeenetError: the results lack the saved setting or the gate loss (a run from an older LEENet).
        """
        selected, gates = results.selected, results.gates
        if selected is None or gates is None or selected.threshold is None or not isinstance(selected.param, (int, float)):
            raise LeenetError("results.json lacks the saved setting or the gate loss: rerun `leenet run` with this "
                              "LEENet to export it in int8")
        return cls(alpha=float(selected.param), loss=str(gates.training["loss"]), threshold=float(selected.threshold))

    def describe(self) -> str:
        return f"alpha={self.alpha:g}, threshold {self.threshold:g} (gate loss {self.loss})"


def gate_scores(exit_prob: np.ndarray) -> torch.Tensor:
    """(N, E-1) float32 logits of exit probabilities (computed in float64); NaN stays NaN (a gate not run)."""
    p = torch.from_numpy(np.asarray(exit_prob, dtype=np.float64))
    return (torch.log(p) - torch.log1p(-p)).float()


def refit_threshold(logits: np.ndarray, exit_prob: np.ndarray, labels: np.ndarray, costs: Sequence[float],
                    loss: str, spent: np.ndarray, saved: float, *, margin: float = BUDGET_MARGIN) -> float:
    """The threshold shared by every gate of least mean ``loss`` at a mean cost of at most ``spent``'s.

    The ``saved`` threshold is kept when it is as good: its mean loss within
    :data:`~leenet.policy.thresholds.BUDGET_TIE` of the search's and its mean cost within the
    float32 policy's plus ``margin`` paired standard errors (the slack budgets keep, so that the
    refit does not chase a few images of calibration noise). The refit moves the threshold only
    where the int8 outputs call for it.

    Args:
        logits: (N, E, K) every exit's int8 logits on the calibration split (NaN where no head runs).
        exit_prob: (N, E-1) every gate's int8 exit probability (NaN where no gate is enabled).
        labels: (N,) int64.
        costs: (E,) each exit's routed cost in the export (its manifest cost).
        loss: the per-exit loss (:func:`leenet.policy.objective.exit_losses`).
        spent: (N,) each image's cost under the float32 policy; its mean is the budget.
        saved: the float32 decision threshold, in (0, 1].
        margin: standard errors of the paired cost difference the saved threshold may spend over.

    Returns:
        A threshold in [0, 1): a sample leaves at the first enabled exit whose probability reaches it.

    Raises:
        LeenetError: no threshold lets samples out early within the float32 policy's cost.
    """
    scores = gate_scores(exit_prob)
    z = torch.from_numpy(np.nan_to_num(np.asarray(logits, dtype=np.float32)))
    losses = exit_losses(z, torch.as_tensor(labels, dtype=torch.int64), loss)
    gates, max_cost = scores.shape[1], float(np.mean(spent))
    cost = torch.tensor(list(costs), dtype=torch.float32)
    # the exported graphs run every head and gate they have whatever fires: nothing is saved by a shut gate
    model = CostModel(cost, torch.zeros(gates), torch.zeros(gates))
    found = budget_thresholds(scores, losses, model, max_cost, rounds=0)
    if found is None or not bool(found.enabled.any()):
        raise LeenetError(f"no decision threshold lets the int8 network exit early within the float32 policy's cost "
                          f"({max_cost:.3f}) on calibration: export float32 (without --int8)")
    found_loss, _ = routed_means(scores, losses, model, found.values[None], found.enabled[None])
    kept = first_exit(scores >= (math.log(saved / (1.0 - saved)) if saved < 1 else math.inf))  # (N,)
    kept_loss, kept_cost = float(losses.gather(1, kept[:, None]).mean()), cost[kept].numpy()
    slack = margin * float(paired_stderr(kept_cost, spent))
    if kept_loss <= float(found_loss[0]) + BUDGET_TIE + 1e-12 and float(kept_cost.mean()) <= max_cost * (1 + 1e-6) + slack:
        return saved
    level = float(found.values[0])
    return 0.0 if level == ALWAYS else 1.0 / (1.0 + math.exp(-level))


@dataclass(frozen=True)
class PolicyFigures:
    """A routing policy on one split: accuracy, mean cost, exit shares."""

    threshold: float  # the decision threshold it routes at
    accuracy: float
    cost: float  # mean relative cost (1.0 = the plain backbone)
    exit_fractions: tuple[float, ...]  # (E,) share of the images leaving at each exit


def route(exit_prob: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) the exit each sample takes at ``threshold``: what :class:`~leenet_runtime.ExitRunner` does,
    on all-exit outputs (the probability compared in float32; NaN, a gate not run, never fires)."""
    leave = torch.from_numpy(np.nan_to_num(exit_prob, nan=-1.0) >= np.float32(threshold))
    return first_exit(leave).numpy()


def policy_figures(logits: np.ndarray, exits: np.ndarray, labels: np.ndarray, costs: Sequence[float],
                   threshold: float) -> PolicyFigures:
    """Figures of samples routed to ``exits`` (N,): their exit's logits (N, E, K) against ``labels``."""
    chosen = logits[np.arange(len(exits)), exits]  # (N, K)
    share = np.bincount(exits, minlength=logits.shape[1]) / len(exits)
    return PolicyFigures(threshold=float(threshold), accuracy=float((chosen.argmax(1) == labels).mean()),
                         cost=float(np.asarray(costs)[exits].mean()), exit_fractions=tuple(float(s) for s in share))
