"""Run directories: created before any work, never written over, files replaced atomically."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path

from leenet.errors import LeenetError
from leenet.files import replace_atomically

STAGES = "stages"  # the folder of a run directory that holds its finished stages until the run ends


def prepare_out_dir(out: str | None, dataset: str, arch: str, *, overwrite: bool) -> Path:
    """Create the run directory before any work; refuses an earlier run's unless asked to overwrite.

    The default name is claimed atomically (a run started in the same second gets ``-2``), and
    a path that cannot be created fails here, not after training.
    """
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return claim_dir(Path("runs") / f"{dataset}-{arch}-{stamp}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LeenetError(f"--out {out} is a file: choose a directory path")
    if (out / "results.json").exists() and not overwrite:
        raise LeenetError(f"{out} already holds a run's results: choose another --out, or add --overwrite")
    if (out / STAGES).is_dir() and not overwrite:
        raise LeenetError(f"{out} holds an interrupted run: continue it with `leenet run ... --resume {out}`, "
                          f"or start over with --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeenetError(f"cannot create --out {out} ({exc.strerror or exc}): "
                          f"choose a directory path you can write") from None
    return out


def resume_dir(out: str) -> Path:
    """The directory of an interrupted run to continue; refuses a finished run or a non-run."""
    path = Path(out)
    if not path.is_dir():
        raise LeenetError(f"--resume {out}: no such run directory; start the run with --out")
    if (path / "results.json").exists():
        raise LeenetError(f"--resume {out}: that run finished; its results are kept as they are")
    if not (path / "config.json").is_file():
        raise LeenetError(f"--resume {out}: no stage of a run finished there (no config.json); "
                          f"start it again with --out")
    return path


def claim_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, … if taken (atomic: mkdir fails when it exists)."""
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise LeenetError(f"cannot create {path} ({exc.strerror or exc}): choose a directory with --out") from None
    raise LeenetError(f"{base} and 998 more names like it are taken: choose a directory with --out")


def warn(message: str) -> None:
    """A one-line warning on stderr, shown even with --quiet: something the user must know about."""
    print(f"warning: {message}", file=sys.stderr)


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def as_json(payload: dict) -> dict:
    """``payload`` as :func:`write_json` writes it and ``json`` reads it back (tuples become lists)."""
    return json.loads(json.dumps(payload, default=_json_default))


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
