"""The engine's layers point down, and no modules import each other.

Reads every ``import`` statement (top level, inside functions and under ``TYPE_CHECKING`` alike) of
the modules under ``flows/``, ``tasks/`` and ``fod_models/`` with ``ast``, so nothing is imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "fod_models")

# Lowest first; a module may import its own layer or a lower one. The first prefix that matches
# a module's dotted name (the module itself or a package above it) gives its layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fod_models", ("fod_models",)),
    (
        "foundation",
        (
            "flows.engine.base",
            "flows.engine.errors",
            "flows.engine.faults",
            "flows.engine.fsutil",
            "flows.engine.interrupts",
        ),
    ),
    ("plan", ("flows.engine.plan",)),
    ("records", ("flows.engine.records",)),
    ("data", ("flows.engine.data",)),
    ("metrics", ("flows.engine.metrics",)),
    ("config", ("flows.engine.config",)),
    ("decisions", ("flows.engine.decisions",)),
    ("outputs", ("flows.engine.outputs",)),
    ("tasks", ("tasks",)),
    ("flows", ("flows",)),
)
# Package markers that hold no code: importing through them says nothing about the layers.
EMPTY_PACKAGES = {"flows", "flows.engine", "tasks"}


def module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def layer_of(module: str) -> tuple[int, str] | None:
    for index, (name, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index, name
    return None


def imported_modules(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a project module in ``path``."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def add(name: str, line: int) -> None:
        # ``import a.b.c`` or ``from a.b import c``: the deepest name that is a project module
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append((name, line))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                add(f"{source}.{alias.name}", node.lineno)
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    files = module_files()
    known = set(files)
    return {module: imported_modules(module, path, known) for module, path in files.items()}


def test_every_module_has_a_layer() -> None:
    assert [module for module in module_files() if layer_of(module) is None] == []


def test_imports_point_down() -> None:
    upward = set()
    for module, imports in import_graph().items():
        own = layer_of(module)
        assert own is not None
        for imported, line in imports:
            if imported in EMPTY_PACKAGES:
                continue
            target = layer_of(imported)
            assert target is not None
            if target[0] > own[0]:
                upward.add(f"{module} (layer {own[1]}) imports {imported} (layer {target[1]}) at line {line}")
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_strongly_connected_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = {
        module: {imported for imported, _ in imports}
        for module, imports in import_graph().items()
        if not module.startswith("fod_models")
    }
    graph = {module: {name for name in imports if name in graph} for module, imports in graph.items()}
    cycles = [" <-> ".join(component) for component in strongly_connected(graph)]
    assert not cycles, "modules that import each other (a cycle through them all):\n" + "\n".join(cycles)
