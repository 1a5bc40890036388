"""mkdocs hooks: the CLI reference rendered from the argument parsers, and the committed benchmark
results served beside the pages that cite them.

The parsers are found through the console scripts the two distributions declare (`leenet` in
pyproject.toml, `leenet-runtime` in runtime/pyproject.toml), so the page follows the code: a new
option, command or help text appears at the next build, and a script whose module has no
``build_parser()`` fails the build.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import tomllib
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
CLI_PAGE = "reference/cli.md"
RESULTS = ROOT / "benchmarks" / "results"
RESULT_SUFFIXES = {".json", ".png", ".html"}  # what the pages link to; the gallery archives stay out
SCRIPTS = (("leenet", ROOT / "pyproject.toml"), ("leenet-runtime", ROOT / "runtime" / "pyproject.toml"))


def script_parser(script: str, pyproject: Path) -> argparse.ArgumentParser:
    """The parser behind a console script: ``build_parser()`` of the module its entry point names."""
    target = tomllib.loads(pyproject.read_text())["project"]["scripts"][script]
    module = importlib.import_module(target.split(":")[0])
    if not hasattr(module, "build_parser"):
        raise RuntimeError(f"{script}: {module.__name__} has no build_parser(); point docs/hooks/reference.py at the parser")
    return module.build_parser()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices else
                                     action.dest.upper())
        names += f" `{metavar}`"
    return names


def _help(action: argparse.Action) -> str:
    text = (action.help or "") % {"default": action.default, "prog": ""} if action.help else ""
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += f" (choices: {', '.join(f'`{c}`' for c in action.choices)})"
    if action.required and action.option_strings:
        text += " (required)"
    return _cell(text)


def _actions_table(actions: list[argparse.Action]) -> list[str]:
    rows = [a for a in actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if not rows:
        return []
    return ["| argument | meaning |", "|---|---|", *(f"| {_option(a)} | {_help(a)} |" for a in rows), ""]


def render_parser(parser: argparse.ArgumentParser, title: str, level: int = 2) -> list[str]:
    """Markdown for one parser and, below it, each of its subcommands."""
    lines = [f"{'#' * level} `{title}`", ""]
    if parser.description:
        lines += [parser.description.replace("\n", " "), ""]
    usage = [line.removeprefix(" " * len("usage: ")) for line in parser.format_usage().strip().split("\n")]
    lines += ["```text", usage[0].removeprefix("usage: "), *usage[1:], "```", ""]
    for group in parser._action_groups:
        table = _actions_table(group._group_actions)
        if table:
            lines += [f"**{group.title}**", "", *table]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if helps.get(name):
                    sub.description = sub.description or helps[name]
                lines += render_parser(sub, f"{title} {name}", level + 1)
    return lines


def cli_reference() -> str:
    """The whole CLI reference page."""
    lines = ["# Command line", "",
             "Generated from the argument parsers at build time: what `--help` prints, as a page.", ""]
    for script, pyproject in SCRIPTS:
        lines += render_parser(script_parser(script, pyproject), script)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """docs/reference/cli.md holds only a pointer (so links to it work outside the site); the page is rendered here."""
    return cli_reference() if page.file.src_uri == CLI_PAGE else markdown


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in RESULT_SUFFIXES:
            uri = f"benchmarks/results/{path.relative_to(RESULTS).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
