"""leenet-runtime: run an exported LEENet with numpy, onnxruntime and Pillow only (no torch)::

    from leenet_runtime import ExitRunner
    from leenet_runtime.preprocess import load_images

    runner = ExitRunner("export/")          # checks manifest.json and every file's sha256
    batch, files, errors = load_images(["cat.png"], runner.manifest.preprocessing)
    logits, exit_index = runner(batch)      # each sample leaves at its own exit

``leenet-runtime predict EXPORT_DIR IMAGE_OR_DIR...`` and ``leenet-runtime serve EXPORT_DIR``
are :func:`leenet_runtime.cli.main`; the server (``pip install 'leenet-runtime[serve]'``) is
:mod:`leenet_runtime.app` over the :class:`Scheduler`.
"""

from leenet_runtime.manifest import ExportError, Manifest, Preprocessing, read_manifest
from leenet_runtime.runner import Carry, ExitRunner, StepResult, default_providers
from leenet_runtime.scheduler import BatchingConfig, Overloaded, Scheduler

__version__ = "0.1.0"
"""leenet-runtime's version (PEP 440)."""

__all__ = [
           "BatchingConfig",
           "Carry",
           "ExitRunner",
           "ExportError",
           "Manifest",
           "Overloaded",
           "Preprocessing",
           "Scheduler",
           "StepResult",
           "__version__",
           "default_providers",
           "read_manifest",
]
