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
Why hold the cost rather than re-solve the saved alpha, and why one threshold: docs/int8.md.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leenet.errors import LeenetError
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
                    loss: str, max_cost: float, saved: float) -> float:
    """The threshold shared by every gate of least mean ``loss`` at a mean cost of at most ``max_cost``.

    The search's ties (mean losses within :data:`~leenet.policy.thresholds.BUDGET_TIE`) go to
    the ``saved`` threshold when it is one of them: the refit moves the threshold only where
    the int8 outputs call for it, not to another point of a flat optimum.

    Args:
        logits: (N, E, K) every exit's logits on the calibration split (NaN where no head runs).
        exit_prob: (N, E-1) every gate's exit probability (NaN where no gate is enabled).
        labels: (N,) int64.
        costs: (E,) each exit's routed cost in the export (its manifest cost).
        loss: the per-exit loss (:func:`leenet.policy.objective.exit_losses`).
        max_cost: the mean cost to stay within (the float32 policy's on the same images).
        saved: the float32 decision threshold, in (0, 1].

    Returns:
        A threshold in [0, 1): a sample leaves at the first enabled exit whose probability reaches it.

    Raises:
        LeenetError: no threshold lets samples out early within ``max_cost``.
    """
    scores = gate_scores(exit_prob)
    z = torch.from_numpy(np.nan_to_num(np.asarray(logits, dtype=np.float32)))
    losses = exit_losses(z, torch.as_tensor(labels, dtype=torch.int64), loss)
    gates = scores.shape[1]
    # the exported graphs run every head and gate they have whatever fires: nothing is saved by a shut gate
    model = CostModel(torch.tensor(list(costs), dtype=torch.float32), torch.zeros(gates), torch.zeros(gates))
    found = budget_thresholds(scores, losses, model, max_cost, rounds=0)
    if found is None or not bool(found.enabled.any()):
        raise LeenetError(f"no decision threshold lets the int8 network exit early within the float32 policy's cost "
                          f"({max_cost:.3f}) on calibration: export float32 (without --int8)")
    on = torch.ones(2, gates, dtype=torch.bool)
    values = torch.stack([found.values, torch.full((gates,), math.log(saved / (1.0 - saved)) if saved < 1 else math.inf)])
    mean_loss, mean_cost = routed_means(scores, losses, model, values, on)
    if mean_loss[1] <= mean_loss[0] + BUDGET_TIE + 1e-12 and mean_cost[1] <= max_cost * (1 + 1e-6):
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
