"""Progress of long loops: a bar on a terminal or in a notebook; where the output is a file, one
line per epoch instead (a log would keep a bar's first frame, "0/9", of every fast epoch)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm


def bars_shown(enabled: bool) -> bool:
    """Whether progress bars are drawn: asked for, and stderr is a terminal or a notebook."""
    return enabled and (getattr(sys.stderr, "isatty", bool)() or "ipykernel" in sys.modules)


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    """A transient progress bar; none when disabled, or when stderr is a file rather than a
    terminal or a notebook."""
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not bars_shown(enabled), dynamic_ncols=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class EpochLines:
    """One line per finished epoch (loss, accuracy where known, seconds, time left) where
    progress is asked for but no bar is drawn; nothing otherwise."""

    def __init__(self, what: str, epochs: int, enabled: bool, log: Callable[[str], None] | None = None,
                 *, start: int = 0) -> None:
        self.what, self.epochs, self.start = what, epochs, start
        self.shown = enabled and not bars_shown(enabled)
        self.log = log or _stderr
        self.began = time.perf_counter()

    def epoch_start(self) -> None:
        self.tick = time.perf_counter()

    def done(self, epoch: int, loss: float, accuracy: str | None = None) -> None:
        """Epoch ``epoch`` (0-based) finished with mean ``loss`` and an ``accuracy`` text."""
        if not self.shown:
            return
        now = time.perf_counter()
        per_epoch = (now - self.began) / (epoch + 1 - self.start)
        left = per_epoch * (self.epochs - epoch - 1)
        self.log(f"{self.what} epoch {epoch + 1}/{self.epochs}: loss {loss:.4f}"
                 + (f", accuracy {accuracy}" if accuracy else "")
                 + f", {now - self.tick:.1f} s, ETA {_duration(left)}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
