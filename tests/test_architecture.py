"""The package's structure, read from its source: layers, no import circles, modules and functions of a readable size.

docs/ARCHITECTURE.md explains the layers; this test is their definition. Every import of src/nextscale (at module
level or inside a function: both load the module) must point to the same layer or a lower one, the import graph
must have no circle, and the package front door (`import nextscale`, `from nextscale import X`) is for users and
the interfaces only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nextscale"

# Lowest first. A module belongs to the first entry that is its name or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("nextscale.files", "nextscale.config_schema", "nextscale.images", "nextscale.model_folder",
                    "nextscale.hub", "nextscale.data", "nextscale.threads", "nextscale.progress")),
    ("models", ("nextscale.tokenizer", "nextscale.transformer", "nextscale.baseline")),
    ("loading", ("nextscale.registry", "nextscale.checkpoints")),
    ("inference", ("nextscale.inference_options", "nextscale.evaluation", "nextscale.rejection",
                   "nextscale.sampling", "nextscale.editing")),
    ("training", ("nextscale.training",)),
    ("interfaces", ("nextscale.commands", "nextscale.serve", "nextscale.cli", "nextscale.__main__",
                    "nextscale.demo", "nextscale")),
]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "nextscale" and module.startswith(prefix + ".")):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)")


def imports_of(module: str) -> set[str]:
    """The nextscale modules `module` imports, anywhere in its code ("from pkg import submodule" -> the submodule)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "nextscale"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nextscale":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(module)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def layer_violations(module: str, targets) -> list[str]:
    own = layer_of(module)
    found = []
    for target in sorted(targets):
        if target not in MODULES:
            found.append(f"{module} imports {target}, which does not exist")
        elif layer_of(target) > own:
            found.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return found


def test_no_module_imports_from_a_higher_layer():
    violations = [v for module in MODULES for v in layer_violations(module, imports_of(module))]
    assert not violations, "\n".join(violations)


def test_only_the_interfaces_use_the_package_front_door():
    """`import nextscale` / `from nextscale import sample` load the whole public API; library code names the
    module it needs, so that a trainer does not load the editor, nor the web app the command line."""
    top = len(LAYERS) - 1
    users = [m for m in MODULES if "nextscale" in imports_of(m) and layer_of(m) < top]
    assert not users


def test_the_import_graph_has_no_circle():
    graph = {m: {t for t in imports_of(m) if t in MODULES and t != "nextscale"} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_layer_check_reads_real_imports_and_reports_a_violation():
    """The checks above see function-level imports and would report an upward one."""
    assert "nextscale.checkpoints" in imports_of("nextscale.commands.export")  # imported inside run()
    assert layer_of("nextscale.training.config") > layer_of("nextscale.sampling") > layer_of("nextscale.registry")
    assert layer_of("nextscale") == len(LAYERS) - 1 and layer_of("nextscale.files") == 0
    assert layer_violations("nextscale.files", {"nextscale.commands.common"}) == [
        "nextscale.files (foundation) imports nextscale.commands.common (interfaces)"]
    assert layer_violations("nextscale.commands.common", {"nextscale.files"}) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_readable(module):
    text = MODULES[module].read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (at most {MAX_MODULE_LINES}): split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
