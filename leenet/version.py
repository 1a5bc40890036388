"""LEENet's version, recorded in results, checkpoints and export manifests."""

__version__ = "0.1.0"
