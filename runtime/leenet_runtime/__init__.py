"""leenet-runtime: run an exported LEENet with numpy, onnxruntime and Pillow only (no torch)::

    from leenet_runtime import ExitRunner
    from leenet_runtime.preprocess import load_images

    runner = ExitRunner("export/")          # checks manifest.json and every file's sha256
    batch, files, errors = load_images(["cat.png"], runner.manifest.preprocessing)
    logits, exit_index = runner(batch)      # each sample leaves at its own exit

``leenet-runtime predict EXPORT_DIR IMAGE_OR_DIR...`` is :func:`leenet_runtime.predict.main`.
"""

from leenet_runtime.manifest import ExportError, Manifest, Preprocessing, read_manifest
from leenet_runtime.runner import Carry, ExitRunner, StepResult, default_providers

__version__ = "0.1.0"
"""leenet-runtime's version (PEP 440)."""

__all__ = [
           "Carry",
           "ExitRunner",
           "ExportError",
           "Manifest",
           "Preprocessing",
           "StepResult",
           "__version__",
           "default_providers",
           "read_manifest",
]
