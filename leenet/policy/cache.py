"""Every exit's outputs on one split, computed once with the backbone frozen.

Caching turns every policy evaluation into a few vectorized tensor operations: a sweep over
dozens of alphas or thresholds costs milliseconds, not a pass over the data. ``N`` samples,
``E`` exits, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.nn.combine import ExitEnsemble
from leenet.nn.gates import gate_features
from leenet.nn.model import ExitNet
from leenet.progress import progress_bar


@dataclass
class CachedOutputs:
    """Every exit's output on one split, computed once with the backbone frozen.

    Attributes:
        logits: (N, E, C) logits of each exit.
        pooled: E-1 tensors (N, D_i), pooled features at each early exit.
        labels: (N,) int64.
    """

    logits: Tensor
    pooled: list[Tensor]
    labels: Tensor

    def __post_init__(self) -> None:
        if self.logits.dim() != 3:
            raise LeenetError(f"cached logits must be (N, exits, classes), got shape {tuple(self.logits.shape)}")
        if self.logits.shape[0] == 0:
            raise LeenetError("no samples to evaluate: the split is empty; use a larger dataset")
        n, _, classes = self.logits.shape
        labels = self.labels
        if labels.dim() != 1 or len(labels) != n or labels.dtype != torch.long:
            raise LeenetError(
                f"labels must be one int64 class index per sample, shape ({n},); got {labels.dtype} of shape "
                f"{tuple(labels.shape)}: pass class indices, not one-hot or float targets"
            )
        lo, hi = int(labels.min()), int(labels.max())  # the split is not empty (checked above)
        if not (0 <= lo and hi < classes):
            raise LeenetError(
                f"labels must be class indices in 0..{classes - 1}; got {lo}..{hi}: "
                f"shift 1-based labels down by one, or give the backbone the right number of classes"
            )
        if not torch.isfinite(self.logits).all():
            raise LeenetError(
                "the network produced NaN or infinite logits: check the input normalization "
                "and the weights (a diverged training run gives this)"
            )

    @property
    def correct(self) -> Tensor:
        """(N, E) bool: whether each exit's prediction is right."""
        return self.logits.argmax(-1) == self.labels[:, None]

    def gate_inputs(self, config: GateConfig) -> list[Tensor]:
        """Inputs of every gate, exactly as the routed forward pass builds them."""
        return [
            gate_features(self.logits[:, i], self.logits[:, :i], self.pooled[i], config)
            for i in range(self.logits.shape[1] - 1)
        ]

    def combined(self, ensemble: ExitEnsemble) -> CachedOutputs:
        """These outputs as a network with ``ensemble`` gives them, from the heads' own logits here
        (computed where the ensemble is, kept on the CPU like every cache)."""
        with torch.no_grad():
            combined = ensemble(self.logits.to(ensemble.weight.device)).float().cpu()
        return CachedOutputs(combined, self.pooled, self.labels)

    def subset(self, index: Tensor) -> CachedOutputs:
        """The outputs of the samples at ``index`` (a fold of the split)."""
        return CachedOutputs(self.logits[index], [p[index] for p in self.pooled], self.labels[index])


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
    for x, y in progress_bar(batches, total, desc, progress):
        out = net.forward_all(x.to(device, non_blocking=True))
        logits.append(out.logits.float().cpu())
        pooled.append([p.float().cpu() for p in out.pooled])
        labels.append(y.cpu())
    net.train(was_training)
    if not logits:
        raise LeenetError(f"{desc}: the split is empty; use a larger dataset or a smaller calibration split")
    per_exit = [torch.cat([batch[i] for batch in pooled]) for i in range(len(pooled[0]))]
    return CachedOutputs(torch.cat(logits), per_exit, torch.cat(labels))


def merge_shards(shards: list[tuple[CachedOutputs, Tensor]], total: int) -> CachedOutputs:
    """The outputs of a whole split from every process's share, each tagged with its sample indices.

    Args:
        shards: per process, its outputs (M_r rows) and the (M_r,) split index of each row;
            rows may repeat (a sampler's padding), repeats of one index must be equal.
        total: N, the size of the split: every index in 0..N-1 must appear.

    Returns:
        The split's outputs in index order, each sample once.
    """
    index = torch.cat([idx for _, idx in shards])
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]  # keep the first copy of each index, drop the padding
    keep = order[first]
    if not torch.equal(index[keep], torch.arange(total)):
        raise LeenetError(f"the processes' outputs do not cover the split's {total} samples exactly once: "
                          f"every process must cache its share of the same split")
    logits = torch.cat([s.logits for s, _ in shards])[keep]
    pooled = [torch.cat([s.pooled[i] for s, _ in shards])[keep] for i in range(len(shards[0][0].pooled))]
    return CachedOutputs(logits, pooled, torch.cat([s.labels for s, _ in shards])[keep])


def cache_state(cache: CachedOutputs) -> dict:
    """A plain dict of tensors (for ``torch.save``; read back with :func:`cache_from_state`)."""
    return {"logits": cache.logits, "pooled": list(cache.pooled), "labels": cache.labels}


def cache_from_state(state: dict) -> CachedOutputs:
    return CachedOutputs(state["logits"], list(state["pooled"]), state["labels"])
