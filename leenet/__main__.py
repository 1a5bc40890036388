"""``python -m leenet``: the `leenet` command, e.g. started by ``torchrun -m leenet run ...``."""

import sys

from leenet.cli import main

sys.exit(main())
