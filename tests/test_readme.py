"""The README's and the getting-started page's promises: every code block runs, or is marked with why it
cannot (``<!-- skip: reason -->`` above it); the user guide's examples that continue the README's run too;
and the README's test command is the one CI runs.

The getting-started page is walked once, as a newcomer would, in one working directory (its ``leenet run``
with a shorter training, ``FAST_RUN``); the README's blocks then run in the same directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
GUIDE = ROOT / "docs" / "guide"
FAST_RUN = ["--epochs", "8", "--head-epochs", "3", "--alphas", "0,0.5,1", "--no-timing", "--quiet"]
LANGUAGES = {"python", "bash", "text"}  # text: output and listings, shown, not run


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    skip: str | None  # why it cannot run here, from a <!-- skip: ... --> line just above it
    line: int


def code_blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text, in order."""
    pattern = re.compile(r"(?:^<!-- skip: ([^\n]*?) -->\n)?^```(\w*)\n(.*?)^```", re.S | re.M)
    return [Block(m.group(2), m.group(3), m.group(1), text.count("\n", 0, m.start(2)) + 1)
            for m in pattern.finditer(text)]


def shell_commands(code: str) -> list[list[str]]:
    """A bash block's commands: continuation lines joined, comments dropped."""
    return [argv for line in code.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


@contextlib.contextmanager
def _working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _entry_point(script: str, pyproject: Path):
    module, func = re.search(rf'^{script} = "([\w.]+):(\w+)"', pyproject.read_text(), re.M).groups()
    return getattr(__import__(module, fromlist=[func]), func)


class Walkthrough:
    """One working directory where documented commands and Python blocks run, in order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runs: set[tuple[str, ...]] = set()
        self.scopes: dict[str, dict] = {}
        self.printed: list[str] = []

    def command(self, argv: list[str], where: str) -> str:
        if argv[0] == "leenet":
            main = _entry_point("leenet", ROOT / "pyproject.toml")
            if argv[1] == "run":
                if tuple(argv) in self.runs:  # README and getting started share their run
                    return ""
                self.runs.add(tuple(argv))
                argv = argv + FAST_RUN
        elif argv[0] == "leenet-runtime":
            main = _entry_point("leenet-runtime", ROOT / "runtime" / "pyproject.toml")
        else:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is not a command these tests run; "
                        "mark its block with <!-- skip: why it cannot run in CI -->")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv[1:])
        assert rc in (0, None), f"{where}: `{shlex.join(argv)}` exited {rc}"
        if argv[1] == "predict":  # one line per image
            folders = [self.workdir / a for a in argv[3:] if not a.startswith("-")]  # after the model
            images = [p for folder in folders if folder.is_dir() for p in folder.iterdir()]
            assert len(out.getvalue().splitlines()) == len(images), out.getvalue()
        return out.getvalue()

    def document(self, path: Path) -> str:
        """Run every block of ``path`` that is not marked skip; what they printed."""
        scope = self.scopes.setdefault(path.name, {})
        printed = io.StringIO()
        with _working_directory(self.workdir):
            for block in code_blocks(path.read_text()):
                where = f"{path.name}:{block.line}"
                assert block.lang in LANGUAGES, f"{where}: a ```{block.lang} block; use one of {sorted(LANGUAGES)}"
                if block.skip is not None:
                    assert block.skip.strip(), f"{where}: say why the block is skipped"
                elif block.lang == "bash":
                    for argv in shell_commands(block.code):
                        printed.write(self.command(argv, where))
                elif block.lang == "python":
                    with contextlib.redirect_stdout(printed):
                        exec(compile(block.code, where, "exec"), scope)
        return printed.getvalue()


@pytest.fixture(scope="session")
def walkthrough(tmp_path_factory) -> Walkthrough:
    """The getting-started page, walked once (about 15 s), and what it printed."""
    walk = Walkthrough(tmp_path_factory.mktemp("newcomer"))
    walk.printed.append(walk.document(GETTING_STARTED))
    return walk


def test_getting_started_runs(walkthrough: Walkthrough) -> None:
    printed = walkthrough.printed[0]
    assert re.search(r"saved: leenet [\d.]+, test accuracy [\d.]+% at cost [\d.]+", printed), printed
    assert (walkthrough.workdir / "digits-export" / "manifest.json").is_file()
    records = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert len(records) == 8 and {"file", "class", "exit", "cost"} <= set(records[0]), printed


def test_readme_runs(walkthrough: Walkthrough) -> None:
    printed = walkthrough.document(README)
    accuracy = float(re.search(r"accuracy ([\d.]+)%", printed).group(1))
    cost = float(re.search(r"mean cost ([\d.]+) of", printed).group(1))
    assert accuracy > 90 and cost < 1.0, printed


def test_every_block_runs_or_says_why() -> None:
    for path in (README, GETTING_STARTED):
        blocks = code_blocks(path.read_text())
        assert blocks, path
        for block in blocks:
            assert block.lang in LANGUAGES, f"{path.name}:{block.line}"
            if block.lang == "bash" and block.skip is None:
                for argv in shell_commands(block.code):
                    assert argv[0] in ("leenet", "leenet-runtime"), f"{path.name}:{block.line}: {argv}"


def test_an_unrunnable_block_fails_unless_marked(tmp_path) -> None:
    text = "<!-- skip: needs the internet -->\n```bash\npip install x\n```\n\n```bash\npip install y\n```\n"
    (tmp_path / "page.md").write_text(text)
    assert [b.skip for b in code_blocks(text)] == ["needs the internet", None]
    with pytest.raises(pytest.fail.Exception, match="pip install y"):
        Walkthrough(tmp_path).document(tmp_path / "page.md")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme_test = re.search(r"python3 -m venv \.venv && \.venv/bin/pip install .*'\.\[test[^']*\]'.* -m pytest -q",
                            README.read_text())
    assert readme_test and readme_test.group(0) in ci


def _readme_python() -> str:
    return next(b.code for b in code_blocks(README.read_text()) if b.lang == "python" and "attach_exits" in b.code)


def _guide_python(page: str) -> str:
    return next(b.code for b in code_blocks((GUIDE / page).read_text()) if b.lang == "python" and b.skip is None)


def test_budget_example_runs(capsys) -> None:
    scope: dict = {}
    exec(compile(_readme_python(), "README.md", "exec"), scope)
    exec(compile(_guide_python("budgets.md"), "budgets.md", "exec"), scope)
    cost = float(re.search(r"budget 0.5: mean cost ([\d.]+)", capsys.readouterr().out).group(1))
    assert cost <= 0.6  # within the budget on calibration; test images may differ a little


def test_better_exits_example_runs(capsys) -> None:
    scope: dict = {}
    exec(compile(_readme_python(), "README.md", "exec"), scope)
    exec(compile(_guide_python("better-exits.md"), "better-exits.md", "exec"), scope)
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"better exits: accuracy ([\d.]+)%", printed).group(1))
    assert accuracy > 90 and scope["net"].ensemble is not None and scope["net"].cascade is not None, printed


def test_bring_your_own_model_example_runs(tmp_path, monkeypatch) -> None:
    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_guide_python("your-model.md"), "your-model.md", "exec"), scope)
    assert (tmp_path / "vit.pt").is_file() and scope["net"].num_exits == 4



def test_readme_stays_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/ and link it"
    assert not re.search(r"\b[Ii]ssue \d+", README.read_text()), "the README speaks to users: no issue numbers"
