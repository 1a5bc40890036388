"""Runs that survive a kill: each finished stage, and each epoch of training, saved atomically.

A run directory holds ``stages/<name>.pt`` while the run works: plain dicts of tensors written
to a temporary file, synced and renamed (a kill leaves the old file or the new one, never half
of one), read back with ``weights_only=True``. ``leenet run --resume DIR`` reuses every stage
found there; the finished run keeps only its usual files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from leenet.distributed import Processes, broadcast, load_loader_state, loader_state
from leenet.errors import LeenetError, brief
from leenet.files import replace_atomically
from leenet.rundir import STAGES, as_json, write_json

FORMAT = "leenet.stage"
VERSION = 1
# settings that do not change what a run computes: they may differ between a run and its resumption
UNCHANGING = {"out", "overwrite", "timing", "progress", "data.download"}
# the backbone fine-tune's own settings: moot when neither the run nor its resumption fine-tunes
FINETUNE_ONLY = {"train.finetune_epochs", "train.backbone_lr_scale", "train.joint_weighting"}


def atomic_save(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``."""
    replace_atomically(path, lambda f: torch.save(payload, f))


def rng_state() -> dict:
    """torch's global random state (CPU, and every GPU once CUDA is in use)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def differences(saved: dict, asked: dict, defaults: dict | None = None) -> list[str]:
    """``"key: A there, B here"`` for each setting of ``asked`` that changes the result and differs.

    A setting ``saved`` lacks (its run was started by a version without it) does not differ when
    ``asked`` holds its value in ``defaults``: the default is what that version computed. The
    fine-tune's settings do not count when both keep the backbone frozen.
    """
    found = []
    missing = object()
    asked = as_json(asked)
    frozen = all(c.get("train", {}).get("backbone_training", "frozen") == "frozen" for c in (saved, asked))
    skipped = UNCHANGING | (FINETUNE_ONLY if frozen else set())

    def walk(a, b, default, key: str) -> None:
        if key in skipped:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, missing), b.get(k), default.get(k, missing) if isinstance(default, dict) else missing,
                     f"{key}.{k}" if key else k)
        elif a is missing:
            if b != default:
                found.append(f"{key}: absent there (made by an older version), {b} here")
        elif a != b:
            found.append(f"{key}: {a} there, {b} here")

    walk(saved, asked, as_json(defaults or {}), "")
    return found


class RunState:
    """The stages of one run directory: what a resumed run finds, and what this run saves.

    Only rank 0 touches the files; :meth:`load` hands rank 0's copy to every rank, so the
    other processes need no shared file system.
    """

    def __init__(self, out: Path | None, asked: dict, procs: Processes, *, resume: bool,
                 defaults: dict | None = None) -> None:
        self.out, self.asked, self.procs = out, asked, procs
        self.dir = out / STAGES if out is not None else None
        self.found: dict[str, dict] = {}  # name -> saved "note" of each stage present at the start
        if procs.is_main and resume:
            changed = differences(json.loads((out / "config.json").read_text()), asked, defaults)
            if changed:
                raise LeenetError(f"--resume {out} was run with other settings ({'; '.join(changed)}): repeat "
                                  f"its arguments, or start a new run with --out")
            self.found = self._scan()
        elif procs.is_main and self.dir.is_dir():  # --overwrite of an interrupted run: start over
            shutil.rmtree(self.dir)
        self.found = broadcast(self.found, procs)

    def _scan(self) -> dict[str, dict]:
        found = {}
        for path in sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []:
            found[path.stem] = self._read(path)["note"]
        return found

    def _read(self, path: Path) -> dict:
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem to the user
            raise LeenetError(f"cannot read {path} ({brief(exc)}): delete it to redo that stage") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise LeenetError(f"{path} is not a stage this LEENet wrote: delete it to redo that stage")
        if payload["world"] != self.procs.world:
            raise LeenetError(f"{path} was written by a run of {payload['world']} processes, this one has "
                              f"{self.procs.world}: resume it with as many")
        return payload

    def has(self, name: str) -> bool:
        return name in self.found

    def load(self, name: str, *, everywhere: bool = True) -> dict | None:
        """The saved stage ``name`` (None if there is none) and the random state after it: on
        every rank, or (``everywhere=False``) on rank 0 only, None elsewhere."""
        if not self.has(name) or not (everywhere or self.procs.is_main):
            return None
        payload = self._read(self.dir / f"{name}.pt") if self.procs.is_main else None
        if everywhere:
            payload = broadcast(payload, self.procs)
        set_rng_state(payload["rng"])
        return payload["data"]

    def save(self, name: str, data: dict, note: dict | None = None) -> None:
        """Write stage ``name`` (rank 0; the other ranks do nothing) with the random state after it."""
        self.found[name] = note or {}
        if not self.procs.is_main:
            return
        if not (self.out / "config.json").exists():  # what a resumption is checked against
            write_json(self.out / "config.json", self.asked)
        self.dir.mkdir(exist_ok=True)
        atomic_save({"format": FORMAT, "version": VERSION, "world": self.procs.world, "note": note or {},
                     "rng": rng_state(), "data": data}, self.dir / f"{name}.pt")

    def drop(self, name: str) -> None:
        """Forget a stage superseded by a later one (an epoch state once training finished)."""
        self.found.pop(name, None)
        if self.procs.is_main:
            (self.dir / f"{name}.pt").unlink(missing_ok=True)

    def finish(self) -> None:
        """The run's results are written: its stages are no longer needed."""
        if self.procs.is_main and self.dir is not None and self.dir.is_dir():
            shutil.rmtree(self.dir)

    def summary(self) -> str:
        """The stages a resumed run reuses, in one line."""
        names = []
        for name, note in self.found.items():
            names.append(f"{name} (epoch {note['epoch']}/{note['epochs']})" if "epoch" in note else name)
        return ", ".join(names) or "nothing (no stage had finished)"


class EpochCheckpoint:
    """Training state saved after every epoch: the model, optimizer, schedule and random state,
    and where the loader is, so a killed run loses at most the epoch in progress."""

    def __init__(self, state: RunState, name: str, loader, epochs: int) -> None:
        self.state, self.name, self.loader, self.epochs = state, name, loader, epochs

    def restore(self) -> dict | None:
        """The training state of the last finished epoch, or None to start from the first."""
        data = self.state.load(self.name)
        if data is not None:
            load_loader_state(self.loader, data.pop("loader"))
        return data

    def save(self, train_state: dict) -> None:
        note = {"epoch": train_state["epoch"], "epochs": self.epochs}
        self.state.save(self.name, {**train_state, "loader": loader_state(self.loader)}, note)
