"""The README's promises: its Python example runs, and its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_python_example_runs(capsys) -> None:
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy ([\d.]+)%", printed).group(1))
    cost = float(re.search(r"mean cost ([\d.]+) of", printed).group(1))
    assert accuracy > 90 and cost < 1.0, printed


def test_budget_example_runs(capsys) -> None:
    first, budget = re.findall(r"```python\n(.*?)```", README.split("## Python API", 1)[1], re.S)[:2]
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    exec(compile(budget, "README.md", "exec"), scope)
    cost = float(re.search(r"budget 0.5: mean cost ([\d.]+)", capsys.readouterr().out).group(1))
    assert cost <= 0.6  # within the budget on calibration; test images may differ a little


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme_test = re.search(r"python3 -m venv \.venv && \.venv/bin/pip install .*'\.\[test[^']*\]'.* -m pytest -q", README)
    assert readme_test and readme_test.group(0) in ci


def test_bring_your_own_model_example_runs(tmp_path, monkeypatch) -> None:
    import pytest

    pytest.importorskip("timm")
    block = re.search(r"## Bring your own model\n.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert (tmp_path / "vit.pt").is_file() and scope["net"].num_exits == 4


def test_better_exits_example_runs(capsys) -> None:
    first = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    better = re.search(r"## Better exits\n.*?```python\n(.*?)```", README, re.S).group(1)
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    exec(compile(better, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"better exits: accuracy ([\d.]+)%", printed).group(1))
    assert accuracy > 90 and scope["net"].ensemble is not None and scope["net"].cascade is not None, printed
