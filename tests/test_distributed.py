"""Several processes on one run (gloo on the CPU, started as torchrun starts them): each process's
share of a split, the gathered cache equal to the one-process cache, and a whole 2-process run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leenet.data import load_dataset, make_loader
from leenet.distributed import Processes, ShardedLoader
from leenet.policy.cache import CachedOutputs, merge_shards
from leenet.report import read_results

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` on loopback: it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", calib_size=0.2, seed=0)


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_cover_the_split_like_distributed_sampler(digits, world: int) -> None:
    shards = [ShardedLoader(digits.train, 64, train=True, seed=0, procs=Processes(r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every process takes as many steps"
    for epoch in (0, 1):
        seen = torch.cat([torch.cat(s.index_batches(epoch)) for s in shards])
        assert set(seen.tolist()) == set(range(len(digits.train)))
        assert len(seen) - len(digits.train) < world * 64, "only the padding repeats"
    assert not torch.equal(shards[0].index_batches(0)[0], shards[0].index_batches(1)[0]), "a new order each epoch"
    first = [s.index_batches(0)[0] for s in shards]
    assert all(set(a.tolist()).isdisjoint(b.tolist()) for a, b in zip(first, first[1:]))


def test_cache_shards_are_the_single_process_batches(digits) -> None:
    single = [y for _, y in make_loader(digits.calib, 50, train=False)]
    shards = [ShardedLoader(digits.calib, 50, train=False, seed=0, procs=Processes(r, 4)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1
    for rank, shard in enumerate(shards):
        for j, (_, y) in enumerate(shard):
            assert torch.equal(y, single[(j * 4 + rank) % len(single)])


def test_merge_shards_drops_the_padding_and_restores_the_order() -> None:
    torch.manual_seed(0)
    n = 7
    whole = CachedOutputs(torch.randn(n, 3, 4), [torch.randn(n, 5), torch.randn(n, 2)], torch.randint(0, 4, (n,)))
    parts = [torch.tensor([0, 1, 4, 5]), torch.tensor([2, 3, 6, 0, 1])]  # 0 and 1 repeated as padding
    merged = merge_shards([(whole.subset(p), p) for p in parts], n)
    assert torch.equal(merged.logits, whole.logits) and torch.equal(merged.labels, whole.labels)
    assert all(torch.equal(a, b) for a, b in zip(merged.pooled, whole.pooled))
    with pytest.raises(Exception, match="exactly once"):
        merge_shards([(whole.subset(parts[0]), parts[0])], n)


WORKER = """
import sys, torch
from pathlib import Path
from leenet import RunConfig, attach_exits, build_backbone, load_dataset, make_loader, collect_outputs, resolve
from leenet.distributed import process_group
from leenet.resume import RunState
from leenet.stages import cache_stage

out = Path(sys.argv[1])
out.mkdir(exist_ok=True)
config = resolve(RunConfig(out=str(out), progress=False))
splits = load_dataset("digits", calib_size=0.2, seed=0)
torch.manual_seed(0)
net = attach_exits(build_backbone("digits_cnn", num_classes=10, in_channels=1), config.model.exits,
                   input_shape=(1, 8, 8), num_classes=10, head=config.model.head, gate_config=config.model.gate)
with process_group(torch.device("cpu")) as procs:
    state = RunState(out if procs.is_main else None, config.to_dict(), procs, resume=False)
    caches = cache_stage(net, config, splits, procs, state, print)
    if procs.is_main:
        for name, ds in (("calib", splits.calib), ("test", splits.test)):
            alone = collect_outputs(net, make_loader(ds, config.data.batch_size, train=False), progress=False)
            got = caches[name]
            same = torch.equal(got.logits, alone.logits) and torch.equal(got.labels, alone.labels) and all(
                torch.equal(a, b) for a, b in zip(got.pooled, alone.pooled))
            print(f"{name} {len(got.labels)} equal={same}", flush=True)
"""


def test_gathered_cache_equals_the_single_process_cache(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = _torchrun(str(script), str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.split("\n")[:2]) == ["calib 287 equal=True", "test 360 equal=True"], done.stdout
    assert (tmp_path / "run" / "stages" / "cache.pt").is_file()


RUN = ["--epochs", "2", "--head-epochs", "12", "--alphas", "0,0.5,1", "--gate-steps", "30", "--no-timing"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "whole"
    return out, _torchrun("-m", "leenet", "run", "--out", str(out), *RUN, cwd=out.parent)


def test_two_process_run_writes_one_complete_run(two_process_run) -> None:
    out, done = two_process_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(out / "results.json")  # the schema check
    raw = json.loads((out / "results.json").read_text())
    assert raw["routed_check"]["matches_simulation"] is True
    assert raw["dataset_info"]["num_calib"] == 287 and results.selected is not None
    assert {"backbone", "heads", "cache", "gates", "evaluate"} <= raw["timings"].keys()
    log = done.stderr.splitlines()
    for once in ("data:", "wrote ", "backbone epoch 2/2", "heads epoch 12/12", "cached the test outputs"):
        assert sum(line.startswith(once) for line in log) == 1, (once, done.stderr)
    assert "2 processes x batch 128 = 256 images a step" in done.stderr
    assert done.stdout.count("oracle") == 1, "one summary, from rank 0"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["class_exits.png", "config.json", "exit_fractions.png", "gallery.npz", "model.pt", "per_exit_accuracy.png",
         "report.html", "results.json", "tradeoff.png"])


def _children(pid: int) -> list[int]:
    def parent(p: str) -> int:
        try:
            return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(p) == pid]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers in /proc")
def test_two_process_run_killed_in_head_training_resumes_to_the_same_results(two_process_run, tmp_path: Path) -> None:
    """SIGKILL to torchrun and both workers, then `torchrun ... --resume`: every rank continues
    from rank 0's saved epoch (the stages hold rank 0's BatchNorm statistics, which every rank uses)."""
    whole, _ = two_process_run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "leenet", "run", "--out", str(out), *RUN]
    proc = subprocess.Popen(command, env=ENV, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    for line in proc.stderr:
        if line.startswith("heads epoch 4/12"):
            for pid in [*_children(proc.pid), proc.pid]:  # the workers live in sessions of their own
                os.kill(pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert not (out / "results.json").exists() and (out / "stages" / "heads-epoch.pt").is_file()
    done = _torchrun("-m", "leenet", "run", *RUN, "--resume", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.startswith("resume: reusing backbone, heads-epoch") for line in done.stderr.splitlines()) == 1
    same = [json.loads((d / "results.json").read_text()) for d in (whole, out)]
    for results in same:
        results.pop("timings"), results["config"].pop("out")
    assert same[0] == same[1]


@pytest.mark.slow  # a 2-process run through torchrun, about 40 s
def test_two_process_joint_fine_tune_runs_on_every_rank_and_logs_once(tmp_path: Path) -> None:
    out = tmp_path / "joint"
    done = _torchrun("-m", "leenet", "run", "--out", str(out), *RUN, "--epochs", "4", "--backbone-training", "joint",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    tuned = read_results(out / "results.json").backbone.training.fine_tune
    assert tuned.mode == "joint" and tuned.epochs == 1 and len(tuned.final_accuracy) == 2
    log = done.stderr.splitlines()
    assert sum(line.startswith("joint epoch 1/1") for line in log) == 1, done.stderr
    assert [line.split(" ")[1] for line in log if line.startswith("joint: ")] == [
        "fine-tuning", "no" if tuned.fell_back else "kept"], "the start and the choice, from rank 0 alone"
