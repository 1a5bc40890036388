"""The command line answers without loading the heavy libraries, and ``leenet``'s lazy public API
holds every name of ``__all__``.

Each command runs in a fresh interpreter (this one has torch loaded already), which reports the
modules it loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leenet
from leenet import GateConfig, attach_exits
from leenet.export import export_onnx

from conftest import EXIT_POINTS, INPUT_SHAPE, NUM_CLASSES, make_tiny_cnn, mix_exits_

HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "onnx")
# Runs `leenet ARGS...` in-process and reports, last on stderr, its exit status and the heavy modules loaded.
PROBE = f"""
import json, sys
from leenet.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""


def _leenet(*args: str) -> tuple[int, list[str], str]:
    """(exit status, heavy modules loaded, stdout) of `leenet ARGS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"], done.stdout


@pytest.mark.parametrize(("args", "code"), [
    ((), 0), (("--help",), 0), (("run", "--help"), 0), (("exits", "--help"), 0), (("datasets",), 0),
    (("backbones",), 0), (("run", "--alphas", "2"), 2), (("run", "--budget-margin", "-1"), 2),
    (("run", "--dataset", "cifar"), 2), (("run", "--resume", "a", "--out", "b"), 2), (("predict", "x", "y.png",
                                                                                         "--engine", "jax"), 2),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_parsing_listing_and_argument_errors_load_no_heavy_library(args: tuple[str, ...], code: int) -> None:
    status, loaded, _ = _leenet(*args)
    assert status == code
    assert loaded == [], f"`leenet {' '.join(args)}` loaded {loaded}"


def test_listings_name_every_dataset_and_backbone() -> None:
    from leenet.backbones import BACKBONES
    from leenet.data import DATASETS

    datasets, backbones = _leenet("datasets")[2], _leenet("backbones")[2]
    assert [line.split()[0] for line in datasets.splitlines()] == list(DATASETS)
    assert [line.split()[0] for line in backbones.splitlines() if not line[0].isspace()] == list(BACKBONES)
    assert f"default exits: {','.join(BACKBONES['resnet50'].default_exits)}" in backbones


def test_a_command_that_needs_torch_loads_it() -> None:
    # the probe can tell: `exits` builds the backbone
    status, loaded, out = _leenet("exits", "--arch", "digits_cnn")
    assert status == 0 and "torch" in loaded and out.startswith("default: block1,block2")


def test_predict_with_the_onnx_engine_loads_no_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                       gate_config=GateConfig()).eval()
    x = torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    export_onnx(mix_exits_(net, x, 0.5), tmp_path / "export")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    status, loaded, out = _leenet("predict", str(tmp_path / "export"), str(tmp_path), "--engine", "onnx", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [Path(r["file"]).name for r in records] == ["0.png", "1.png", "2.png"]
    assert loaded == [], f"`leenet predict --engine onnx` loaded {loaded}"


def test_import_leenet_loads_no_heavy_library() -> None:
    code = f"import sys, leenet; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", leenet.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(leenet, name)
    assert value is not None and name in dir(leenet)
    if not name.startswith("__"):
        assert getattr(value, "__module__", "").startswith("leenet") or isinstance(value, dict), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'ExitNett'"):
        leenet.ExitNett  # noqa: B018
    assert not hasattr(leenet, "torch")


def test_the_lazy_table_is_what_type_checkers_read() -> None:
    # the TYPE_CHECKING imports and _EXPORTS name the same objects, and __all__ all of them
    tree = ast.parse(Path(leenet.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in block.body for alias in node.names}
    assert imported == leenet._MODULE_OF
    assert sorted(leenet.__all__) == sorted([*imported, "__version__"])
