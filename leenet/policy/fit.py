"""Fitting gates on cached calibration outputs: what every objective shares, and the expected
loss ("soft") and hard-target ("hard") objectives for one alpha.

Gate fitting never sees the network: a :class:`GateProblem` holds what it uses (the gate
architecture to copy, what the gates read, and the exit costs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leenet.config import GateConfig, GateTrainConfig
from leenet.errors import LeenetError
from leenet.nn.cost import CostModel
from leenet.nn.model import ExitNet
from leenet.policy.cache import CachedOutputs
from leenet.policy.objective import balanced_bce, exit_losses, expected_exit_loss, hard_exit_targets
from leenet.policy.simulate import first_exit


@dataclass(frozen=True)
class GateProblem:
    """What fitting gates uses from an :class:`~leenet.nn.model.ExitNet`.

    Attributes:
        gates: the gate architecture; fits return fresh copies and never modify it.
        gate_config: what the gates read (see :func:`leenet.nn.gates.gate_features`).
        costs: the exit costs on the CPU, with what a disabled gate saves.
    """

    gates: nn.ModuleList
    gate_config: GateConfig
    costs: CostModel

    @classmethod
    def of(cls, net: ExitNet) -> GateProblem:
        return cls(net.gates, net.gate_config, CostModel.of(net))

    @property
    def num_exits(self) -> int:
        return len(self.costs.cost)

    def inputs(self, cache: CachedOutputs) -> list[Tensor]:
        """Every gate's inputs on ``cache``, exactly as the routed forward pass builds them."""
        return [x.detach() for x in cache.gate_inputs(self.gate_config)]


def fresh_gates(problem: GateProblem, inputs: Sequence[Tensor], seed: int) -> nn.ModuleList:
    """Newly initialized copies of the problem's gates on the CPU, inputs standardized on ``inputs``."""
    torch.manual_seed(seed)
    gates = copy.deepcopy(problem.gates).cpu()
    for gate, x in zip(gates, inputs):
        for layer in gate.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        gate.enabled.fill_(True)
        gate.fit_input_stats(x)
    return gates


def gate_logits(gates: Sequence[nn.Module], inputs: Sequence[Tensor]) -> Tensor:
    """(N, E-1) pre-sigmoid scores of a set of gates on their inputs (differentiable)."""
    return torch.stack([gate.logit(x) for gate, x in zip(gates, inputs)], dim=1)


def fold_splits(n: int, k: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``k`` (fit, held) index pairs of a seeded, balanced split: each sample is held out once."""
    if n < 2:
        raise LeenetError(f"out-of-fold calibration needs at least 2 calibration samples, got {n}: "
                          f"hold out more (--calib-size) or set crossfit=1")
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % k  # (N,)
    return [((fold != i).nonzero().squeeze(1), (fold == i).nonzero().squeeze(1)) for i in range(k)]


def out_of_fold(n: int, folds: int, seed: int, fit_and_score: Callable[[Tensor, Tensor, int], Tensor],
                width: int) -> Tensor:
    """(N, width) scores of each sample from a model fit without its fold.

    Gates judged on the samples they were fit to look surer than they are; scoring each
    calibration sample by a fit on the other folds judges it as a test sample would be.
    ``fit_and_score(fit, held, k)`` fits on the rows ``fit`` (seeded by fold ``k``) and
    returns the scores (len(held), width) of the rows ``held``.
    """
    scores = torch.empty(n, width)
    for k, (fit, held) in enumerate(fold_splits(n, folds, seed)):
        scores[held] = fit_and_score(fit, held, k)
    return scores


@torch.no_grad()
def switch_off_unpaid_exits(gates: nn.ModuleList, inputs: Sequence[Tensor], losses: Tensor,
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


def fit_loss_gates(problem: GateProblem, cache: CachedOutputs, alpha: float, config: GateTrainConfig, *,
                   seed: int = 0, inputs: Sequence[Tensor] | None = None) -> nn.ModuleList:
    """Gates for one raw ``alpha`` fit by the "soft" (expected loss) or "hard" (balanced BCE on
    each sample's best exit) objective, then exits that do not pay for their head switched off.

    Args:
        problem: the gates to copy, what they read and the exit costs.
        cache: outputs of the frozen network on the calibration split.
        alpha: the weight of cost in ``(1 − a)·loss + a·cost`` as written (raw units).
        config: objective, loss and optimizer settings.
        seed: seeds the gates' initialization.
        inputs: precomputed ``problem.inputs(cache)`` (saves time in sweeps).

    Returns:
        The fitted gates, on the CPU, in eval mode.
    """
    if config.objective not in ("soft", "hard"):
        raise LeenetError(f"fit_loss_gates fits 'soft' or 'hard' gates, not '{config.objective}'")
    inputs = list(inputs) if inputs is not None else problem.inputs(cache)
    gates = fresh_gates(problem, inputs, seed)
    if alpha == 0.0:  # compute is free: the backbone's own exit, exactly (as for "predict")
        for gate in gates:
            gate.enabled.fill_(False)
        return gates.eval()
    losses = exit_losses(cache.logits.detach(), cache.labels, config.loss)  # (N, E)
    cost = problem.costs.cost
    targets = hard_exit_targets(losses, cost, alpha) if config.objective == "hard" else None
    optimizer = torch.optim.AdamW(gates.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gates.train()
    for _ in range(config.steps):
        scores = gate_logits(gates, inputs)
        if targets is not None:
            loss = balanced_bce(scores, targets)
        else:
            loss = expected_exit_loss(torch.sigmoid(scores), losses, cost, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    switch_off_unpaid_exits(gates.eval(), inputs, losses, problem.costs, alpha)
    return gates


def loss_gates_out_of_fold(problem: GateProblem, cache: CachedOutputs, alpha: float, config: GateTrainConfig,
                           *, seed: int, inputs: Sequence[Tensor]) -> Tensor | None:
    """(N, E-1) gate probabilities of each calibration sample from gates fit without its fold
    (None with ``config.crossfit = 1``)."""
    if config.crossfit < 2 or problem.num_exits < 2:
        return None

    def fit_and_score(fit: Tensor, held: Tensor, k: int) -> Tensor:
        gates = fit_loss_gates(problem, cache.subset(fit), alpha, config, seed=seed + 1 + k,
                               inputs=[x[fit] for x in inputs])
        with torch.no_grad():
            return torch.stack([g(x[held]) for g, x in zip(gates, inputs)], dim=1)

    return out_of_fold(len(cache.labels), config.crossfit, seed, fit_and_score, problem.num_exits - 1)
