"""The documentation site's promises: every public name has a docstring and a place on the API pages,
and the CLI reference is rendered from the real parsers (`mkdocs build --strict` in .ci/run checks links)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API_PAGES = {"leenet": ROOT / "docs" / "reference" / "api.md", "leenet_runtime": ROOT / "docs" / "reference" / "runtime.md"}


def own_docstring(obj: object) -> str | None:
    """``obj``'s own docstring: not one inherited, and not the signature dataclasses write when there is none."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if doc and dataclasses.is_dataclass(obj) and inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return None
    return doc.strip() if doc else None


def attribute_docstring(package: str, name: str) -> str | None:
    """The docstring written under a module-level constant (what mkdocstrings shows for it)."""
    griffe = pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]') reads attribute docstrings")
    loaded = griffe.load(package, search_paths=[str(ROOT), str(ROOT / "runtime")], resolve_aliases=True)
    doc = loaded[name].docstring
    return doc.value.strip() if doc else None


@pytest.mark.parametrize("package", API_PAGES)
def test_every_public_name_has_a_docstring(package: str) -> None:
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)  # works for eager and lazy (PEP 562) packages alike
        callable_ = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj)
        doc = own_docstring(obj) if callable_ else attribute_docstring(package, name)
        if not doc:
            missing.append(name)
    assert not missing, f"{package}: public names without a docstring: {missing}"


def test_own_docstring_sees_what_is_missing() -> None:
    @dataclasses.dataclass
    class Bare:
        x: int

    class Child(Exception):
        pass

    def bare() -> None:
        pass

    assert own_docstring(Bare) is None and own_docstring(Child) is None and own_docstring(bare) is None
    assert own_docstring(own_docstring)


@pytest.mark.parametrize("package", API_PAGES)
def test_api_page_lists_every_public_name(package: str) -> None:
    listed = re.findall(rf"^::: {package}\.(\S+)$", API_PAGES[package].read_text(), re.M)
    exported = importlib.import_module(package).__all__
    assert len(listed) == len(set(listed)), f"listed twice on {API_PAGES[package].name}"
    assert set(listed) == set(exported), (
        f"{API_PAGES[package].name}: missing {sorted(set(exported) - set(listed))}, "
        f"not public {sorted(set(listed) - set(exported))}")


def test_cli_reference_covers_every_command_and_option() -> None:
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        reference = importlib.import_module("reference")
    finally:
        sys.path.pop(0)
    page = reference.cli_reference()
    for script, pyproject in reference.SCRIPTS:
        parser = reference.script_parser(script, pyproject)
        for sub in parser._subparsers._group_actions[0].choices.values():
            assert f"`{sub.prog}`" in page, sub.prog
            for action in sub._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                for option in action.option_strings:
                    assert f"`{option}`" in page, f"{sub.prog} {option}"


@pytest.mark.parametrize("page", ["README.md", "benchmarks/README.md"])
def test_links_outside_the_site_resolve(page: str) -> None:
    """mkdocs checks the site's links; these two pages are read on the repository instead."""
    path = ROOT / page
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    assert targets, page
    broken = [t for t in targets if "://" not in t and not (path.parent / t).exists()]
    assert not broken, f"{page}: links to missing files {broken}"


def test_no_page_names_an_issue_number() -> None:
    """Users do not know the tracker's numbers: pages say what changed instead."""
    pages = [*(ROOT / "docs").rglob("*.md")]
    named = [str(p) for p in pages if re.search(r"\bissues? #?\d+", p.read_text(), re.I)]
    assert pages and not named, named
