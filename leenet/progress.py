"""Progress bars for long loops: shown on a terminal or in a notebook, never drawn into a log."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    """A transient progress bar; none when disabled, or when stderr is a file rather than a
    terminal or a notebook (a log would keep a bar's first frame, "0/9", of every fast epoch)."""
    shown = enabled and (getattr(sys.stderr, "isatty", bool)() or "ipykernel" in sys.modules)
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not shown, dynamic_ncols=True)
