"""The one exception type users see: a problem with their input, with the fix in its text."""


def brief(exc: BaseException, limit: int | None = 160) -> str:
    """An exception's message on one line and at most ``limit`` characters (None: any length),
    to quote inside a :class:`LeenetError` (torch's and tarfile's reasons span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


class LeenetError(Exception):
    """Bad input or state the user can fix. The CLI prints ``error: <message>`` and exits 2.

    Raise it (or a subclass) with a one-line message that says what is wrong *and* how to
    fix it, e.g. ``unknown dataset 'cifar' (valid: digits, fashion-mnist, cifar10)``.
    """


class DataError(LeenetError):
    """A dataset is missing, corrupt, empty or does not fit the model."""


class ExitPointError(LeenetError):
    """An exit point name is unknown or does not cut the network at a single tensor."""


class CheckpointError(LeenetError):
    """A checkpoint file is missing, corrupt, of another version or for another model."""
