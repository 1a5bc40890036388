"""leenet-runtime installed alone in a fresh virtual environment (no torch) classifies exported digits.

Creating the environment and installing ``./runtime`` from the package mirror takes about
20-25 s on an idle 2-core machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict_files import make_digits_run, write_digit_pngs

from leenet.export import export_onnx
from leenet.predict import predict_files

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def _run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False)


def test_runtime_without_torch_classifies_exported_digits(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    created = _run(sys.executable, "-m", "venv", venv)
    assert created.returncode == 0, created.stderr
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    source = shutil.copytree(RUNTIME, tmp_path / "runtime", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    installed = _run(bin_dir / "python", "-m", "pip", "install", "--quiet", source)  # a copy: pip builds in place
    if installed.returncode != 0:
        pytest.skip(f"leenet-runtime's dependencies could not be installed here: {installed.stderr[-300:]}")
    no_torch = _run(bin_dir / "python", "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    make_digits_run(tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "export")
    files, _ = write_digit_pngs(tmp_path / "images", 30)
    result = _run(bin_dir / "leenet-runtime", "predict", tmp_path / "export", tmp_path / "images",
                  "--json", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    want = list(predict_files(tmp_path / "run", files, batch_size=8))
    assert [(r["file"], r["class_index"], r["exit_index"]) for r in records] == [
        (w["file"], w["class_index"], w["exit_index"]) for w in want]
    imported = _run(bin_dir / "python", "-c",
                    "import sys, leenet_runtime.predict; print('torch' in sys.modules)")
    assert imported.stdout.strip() == "False"
