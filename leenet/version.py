"""LEENet's version, recorded in results, checkpoints and export manifests."""

__version__ = "0.1.0"
"""The installed LEENet's version (PEP 440), written into every artifact it makes."""
