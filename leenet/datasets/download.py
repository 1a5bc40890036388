"""Where datasets live by default, and the one function that fetches a file over HTTP."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

from leenet.errors import DataError

DEFAULT_ROOT = Path.home() / ".cache" / "leenet"  # datasets go to DEFAULT_ROOT/<name>


def default_dir(name: str) -> Path:
    """The folder a dataset is read from and downloaded to when no ``data_dir`` is given."""
    return DEFAULT_ROOT / name


def fetch_url(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file, so a cut download leaves no file.

    Raises:
        DataError: the network or the disk failed; the message says what to do instead.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
        part.replace(dest)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"downloading {url} to {dest} failed ({exc}): check the network connection, "
            f"or fetch the file by hand and pass --data-dir"
        ) from exc
    return dest
