"""The package's dependencies run one way: each module imports only from its own layer or those
below it, and no two modules import each other, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "leenet"
LAYERS = [  # lowest first; a module may import from its own layer and every layer before it
    {"errors", "version", "progress", "files"},
    {"config", "catalog"},
    {"nn"},
    {"backbones", "datasets"},
    {"data"},
    {"checkpoint", "defaults", "preflight", "rundir", "distributed", "resume"},
    {"train", "policy"},
    {"finetune"},
    {"evaluate"},
    {"report", "export"},
    {"predict"},
    {"stages"},
    {"pipeline"},
    {"cli", "cli_run", "__main__"},
]
RANK = {name: k for k, layer in enumerate(LAYERS) for name in layer}


def _imports() -> dict[str, set[str]]:
    """Module name (``leenet.nn.model``) → the leenet modules it imports, at any depth of its code."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "leenet":
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "leenet"}
        graph[name] = found
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer() -> None:
    unplaced = {_part(m) for m in _imports()} - set(RANK) - {"__init__"}
    assert not unplaced, f"add {sorted(unplaced)} to LAYERS"


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{m} imports {t}" for m, targets in _imports().items() if _part(m) != "__init__"
             for t in targets if t == "leenet" or RANK[_part(t)] > RANK[_part(m)]]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = _imports()
    # a package's __init__ re-exports its modules: importing the package means importing them
    expand = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in expand[node]:
            if nxt == "leenet" or nxt.startswith(node + "."):
                continue  # the package root, or a package importing its own modules
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
