"""Several processes on one run, started by torchrun: who is who, and each one's share of a split.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`process_group` joins the group they describe (gloo on the CPU, nccl on GPUs). Training
shards each epoch's shuffled order like ``DistributedSampler`` (padded so every process takes
as many steps); caching shards whole batches of the single-process order, so every sample is
computed in the very batch one process would put it in and the gathered cache is bit for bit
the single-process one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from leenet.datasets.folder import ImageFolderDataset
from leenet.datasets.memory import TensorImageDataset
from leenet.errors import LeenetError


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world`` processes; ``device`` it computes on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0  # the rank on this machine

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that fits gates, evaluates, logs and writes every file."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


@contextmanager
def process_group(device: torch.device) -> Iterator[Processes]:
    """Join the process group torchrun's environment describes for the run, and leave it after.

    Without ``WORLD_SIZE`` (or with 1) this is one plain process on ``device``. On CUDA each
    process takes the GPU of its ``LOCAL_RANK``. A group that is already initialized (by the
    caller) is used as it is and left initialized.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield Processes(device=device)
        return
    if not dist.is_available():
        raise LeenetError("WORLD_SIZE is set but this torch has no torch.distributed: run one process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), device, int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def each_machine_first(procs: Processes) -> Iterator[None]:
    """Run the body on each machine's first process before its other processes (e.g. a
    download into a shared data folder, which several writers would break)."""
    if procs.distributed and procs.local_rank != 0:
        dist.barrier()
    yield
    if procs.distributed and procs.local_rank == 0:
        dist.barrier()


def broadcast(value, procs: Processes):
    """``value`` as rank 0 has it, on every rank (any picklable object; the identity in one process)."""
    if not procs.distributed:
        return value
    box = [value if procs.is_main else None]
    dist.broadcast_object_list(box, src=0, device=procs.device if procs.device.type == "cuda" else None)
    return box[0]


def gather(value, procs: Processes) -> list | None:
    """Every rank's ``value`` on rank 0, in rank order; None on the other ranks."""
    if not procs.distributed:
        return [value]
    box = [None] * procs.world if procs.is_main else None
    dist.gather_object(value, box, dst=0)
    return box


def sync_from_main(module: torch.nn.Module, procs: Processes) -> None:
    """Give every rank rank 0's weights and buffers. After DDP training the weights agree, but
    each rank's BatchNorm statistics come from its own last batches: the network every rank
    caches with, and the one saved, must be the same."""
    if procs.distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def data_parallel(module: torch.nn.Module, procs: Processes) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes train it (its
    parameters that require no gradient are neither synchronized nor waited for)."""
    if not procs.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)


def sum_over_ranks(values: list[float], procs: Processes) -> list[float]:
    """Per-epoch totals (loss sums, counts) added over every rank."""
    if not procs.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(total)
    return total.tolist()


class ShardedLoader:
    """One process's batches of a split, ``batch_size`` per process.

    ``train=True``: every epoch a shuffle seeded by ``(seed, epoch)``, the same on all ranks,
    padded with its first indices to a multiple of ``world`` and dealt out ``rank::world``
    (DistributedSampler's scheme; a last batch of one sample is dropped, as in one process);
    augmentation draws from a generator seeded by ``(seed, epoch, rank)``, so an epoch is the
    same whenever it runs. ``train=False``: the single-process batches in order, batch ``k``
    to rank ``k % world``, padded with repeats of the first batches so every rank runs as many.
    """

    def __init__(self, ds: Dataset, batch_size: int, *, train: bool, seed: int, procs: Processes) -> None:
        self.ds, self.batch_size, self.train, self.seed = ds, batch_size, train, seed
        self.rank, self.world = procs.rank, procs.world
        self.epoch = 0  # passes started: the next pass draws epoch `self.epoch`
        n = len(ds)
        if train:
            self.per_rank = math.ceil(n / self.world)
            full, rest = divmod(self.per_rank, batch_size)
            self.length = full if rest == 1 and full > 0 else full + (rest > 0)
        else:
            self.length = math.ceil(math.ceil(n / batch_size) / self.world)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def index_batches(self, epoch: int) -> list[Tensor]:
        """This rank's sample indices, batch by batch, in epoch ``epoch``."""
        n, b = len(self.ds), self.batch_size
        if not self.train:
            batches = torch.arange(n).split(b)
            return [batches[(j * self.world + self.rank) % len(batches)] for j in range(self.length)]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
        total = self.per_rank * self.world
        padded = torch.cat([order] * (total // n) + [order[: total % n]])
        mine = padded[self.rank::self.world]
        return [mine[k * b:(k + 1) * b] for k in range(self.length)]

    def indices(self) -> Tensor:
        """(M,) the sample index of every row this rank yields in a pass (repeats included)."""
        return torch.cat(self.index_batches(self.epoch))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        batches = self.index_batches(epoch)
        if isinstance(self.ds, TensorImageDataset):
            seed = (self.seed * 1_000_003 + epoch * 7919 + self.rank + 1) % 2**63
            generator = torch.Generator().manual_seed(seed)
            for idx in batches:
                yield self.ds.batch(idx, augment=self.train, generator=generator)
            return
        ds = self.ds.with_augment(self.train) if isinstance(self.ds, ImageFolderDataset) else self.ds
        yield from DataLoader(ds, batch_sampler=[idx.tolist() for idx in batches])


def loader_state(loader) -> dict:
    """What a training loader needs to repeat its next pass after a restart."""
    if isinstance(loader, ShardedLoader):
        return {"epoch": loader.epoch}
    return {"generator": loader.generator.get_state()}


def load_loader_state(loader, state: dict) -> None:
    if isinstance(loader, ShardedLoader):
        loader.set_epoch(int(state["epoch"]))
    else:
        loader.generator.set_state(state["generator"])
