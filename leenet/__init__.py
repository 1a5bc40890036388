"""LEENet: early-exit networks with a learned exit policy.

The pieces most users need are importable from here::

    from leenet import attach_exits, load_checkpoint, GateConfig, run, RunConfig
"""

__version__ = "0.1.0"

from leenet.build import attach_exits
from leenet.checkpoint import load_checkpoint, save_checkpoint
from leenet.errors import LeenetError
from leenet.heads import GateConfig
from leenet.model import ExitNet

def run(config=None, **kwargs):
    """Run the whole pipeline (see :func:`leenet.pipeline.run`); ``config`` defaults to digits."""
    from leenet.config import RunConfig
    from leenet.pipeline import run as _run

    return _run(config or RunConfig(), **kwargs)


def __getattr__(name: str):
    if name == "RunConfig":  # config pulls in the training module: load on first use
        from leenet.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'leenet' has no attribute {name!r}")


__all__ = ["ExitNet", "GateConfig", "LeenetError", "RunConfig", "attach_exits", "load_checkpoint",
           "run", "save_checkpoint", "__version__"]
