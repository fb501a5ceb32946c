"""The package's layers: imports flow one way and no module imports itself round a circle.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a
circle closed by a deferred import is still a circle. Layers, lowest first:
core -> runtime -> analysis -> training -> models, tasks -> testing -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).parents[1] / "transformer_lens_mgp"
NAME = PACKAGE.name
LAYERS = {
    "core": 0,
    "runtime": 1,
    "analysis": 2,
    "training": 3,
    "models": 4,
    "tasks": 4,
    "testing": 5,
    "cli": 6,
    "__main__": 6,
    "": 7,  # the package's __init__: the public API
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, wherever the import statement is."""
    tree = ast.parse(MODULES[module].read_text())
    here = module.split(".") if is_package(module) else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == NAME}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != NAME:
                continue
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or {target}
    return {m for m in found if m in MODULES and m != module}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


GRAPH = nx.DiGraph([(m, i) for m in MODULES for i in imports_of(m)])
GRAPH.add_nodes_from(MODULES)


def test_every_module_has_a_layer():
    assert all(layer(m) is not None for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    upward = [m for m in GRAPH.successors(module) if layer(m) > layer(module)]
    assert not upward, f"{module} (layer {layer(module)}) imports {upward}"


def test_there_is_no_import_cycle():
    cycles = list(nx.simple_cycles(GRAPH))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_private_names_stay_in_their_module():
    crossing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or node.module.startswith(NAME)):
                private = [a.name for a in node.names if a.name.startswith("_")]
                crossing += [f"{module} imports {name}" for name in private]
    assert not crossing, crossing


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The test above must be able to fail: a planted upward import and cycle are found."""
    graph = GRAPH.copy()
    graph.add_edge(f"{NAME}.core.nodes", f"{NAME}.training.pruner")
    assert layer(f"{NAME}.training.pruner") > layer(f"{NAME}.core.nodes")
    assert list(nx.simple_cycles(graph))
