"""LEENet: early-exit networks with a learned exit policy."""

__version__ = "0.1.0"
