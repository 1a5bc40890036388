"""A small export with mixed exits and its images, shared by the server tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leenet import GateConfig, attach_exits
from leenet.export import export_onnx
from leenet.nn.model import ExitOutputs

from conftest import EXIT_POINTS, INPUT_SHAPE, assert_routes_like, make_tiny_cnn, mix_exits_


def make_export(out: Path, history: bool = True) -> Path:
    """Export the tiny CNN with gates set so that every exit takes some rows."""
    net = attach_exits(make_tiny_cnn(), EXIT_POINTS, input_shape=INPUT_SHAPE, num_classes=5,
                       gate_config=GateConfig(history=history)).eval()
    mix_exits_(net, torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1)), 0.5)
    export_onnx(net, out)
    return out


def images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3, 16, 16) float32 network inputs."""
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE), dtype=np.float32)


def png_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n random 16x16 RGB PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files



def assert_same_answers(runner, x: np.ndarray, logits: np.ndarray, exits: np.ndarray) -> None:
    """Served answers route as the export does: :func:`conftest.assert_routes_like` (its tie rule
    included) against every exit of every image, as ``runner.all_exits`` computes them."""
    every, exit_prob = runner.all_exits(x)
    reference = ExitOutputs(torch.from_numpy(every), torch.from_numpy(np.nan_to_num(exit_prob, nan=0.0)), [])
    assert_routes_like(reference, float(runner.threshold), exits, logits)
