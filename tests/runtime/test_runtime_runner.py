"""ExitRunner: manifest checks, one-line errors for bad exports and bad batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from leenet import GateConfig, attach_exits
from leenet.export import export_onnx
from leenet_runtime import ExitRunner, ExportError, read_manifest
from leenet_runtime.manifest import MANIFEST_NAME

from conftest import EXIT_POINTS, INPUT_SHAPE, make_tiny_cnn, mix_exits_


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=5,
                       gate_config=GateConfig()).eval()
    mix_exits_(net, torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1)), 0.5)
    out = tmp_path_factory.mktemp("export") / "tiny"
    export_onnx(net, out)
    return out


@pytest.fixture
def copy_of(export_dir, tmp_path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "copy"))


def _one_line_error(export: Path, match: str) -> str:
    with pytest.raises(ExportError, match=match) as err:
        ExitRunner(export)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_runner_loads_and_routes(export_dir) -> None:
    runner = ExitRunner(export_dir)
    logits, exit_index = runner(np.random.default_rng(0).standard_normal((9, *INPUT_SHAPE), dtype=np.float32))
    assert logits.shape == (9, 5) and logits.dtype == np.float32
    assert exit_index.shape == (9,) and exit_index.dtype == np.int64
    assert runner.exit_names == [*EXIT_POINTS, "final"]
    assert runner.routed_cost(exit_index).shape == (9,)


def test_empty_batch(export_dir) -> None:
    logits, exit_index = ExitRunner(export_dir)(np.zeros((0, *INPUT_SHAPE), np.float32))
    assert logits.shape == (0, 5) and exit_index.shape == (0,)


def test_missing_graph_is_refused(copy_of) -> None:
    (copy_of / "stage1.onnx").unlink()
    assert "stage1.onnx is missing" in _one_line_error(copy_of, "missing")


def test_altered_graph_is_refused(copy_of) -> None:
    path = copy_of / "stage2.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "stage2.onnx was altered" in _one_line_error(copy_of, "altered")


def test_missing_manifest_and_other_version_are_refused(copy_of) -> None:
    manifest = json.loads((copy_of / MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (copy_of / MANIFEST_NAME).write_text(json.dumps(manifest))
    _one_line_error(copy_of, "manifest version 99")
    (copy_of / MANIFEST_NAME).unlink()
    _one_line_error(copy_of, "not found")


def test_malformed_manifest_names_the_field(copy_of) -> None:
    manifest = json.loads((copy_of / MANIFEST_NAME).read_text())
    manifest["exits"][0]["cost"] = "cheap"
    del manifest["threshold"]
    (copy_of / MANIFEST_NAME).write_text(json.dumps(manifest))
    _one_line_error(copy_of, "lacks threshold")
    manifest["threshold"] = 0.5
    (copy_of / MANIFEST_NAME).write_text(json.dumps(manifest))
    _one_line_error(copy_of, r"manifest.exits\[0\].cost should be float")


@pytest.mark.parametrize("batch, match", [
    (np.zeros((2, 3, 8, 8), np.float32), r"expected a batch of shape \(N, 3, 16, 16\)"),
    (np.zeros((3, 16, 16), np.float32), "one image needs a batch dimension"),
    (np.zeros((2, *INPUT_SHAPE), np.float64), "float64"),
    ([[0.0]], "numpy array"),
])
def test_bad_batches_are_refused_in_one_line(export_dir, batch, match: str) -> None:
    runner = ExitRunner(export_dir)
    with pytest.raises(ExportError, match=match) as err:
        runner(batch)
    assert "\n" not in str(err.value)


def test_providers_argument(export_dir) -> None:
    runner = ExitRunner(export_dir, providers=["CPUExecutionProvider"])
    assert runner.sessions[0].get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ExportError, match="not available"):
        ExitRunner(export_dir, providers=["NoSuchExecutionProvider"])


def test_manifest_reads_back_what_was_written(export_dir) -> None:
    manifest = read_manifest(export_dir)
    assert manifest.input_shape == INPUT_SHAPE and manifest.dtype == "float32"
    assert all(len(h) == 64 for h in manifest.files.values())
