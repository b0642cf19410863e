"""The import graph of our packages (pure: ast, no imports): no cycle between modules, and each package imports
only the layers below it.

Layers: ``schemas`` (the wire contract) imports none of ours; ``common`` (platform code services share) only
``schemas``; the services ``gateway``, ``workers`` and ``autoscaler`` never import each other; ``fleet`` (SDK,
CLI, local stack) imports ``schemas``, ``common`` and the autoscaler's read API ``autoscaler.state`` only.
Every import counts: module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "common", "gateway", "workers", "autoscaler", "fleet")
SERVICES = frozenset({"gateway", "workers", "autoscaler"})

#: What each package may import besides itself (a module name or a package prefix).
ALLOWED: dict[str, tuple[str, ...]] = {
    "schemas": (),
    "common": ("schemas",),
    "gateway": ("schemas", "common"),
    "workers": ("schemas", "common"),
    "autoscaler": ("schemas", "common"),
    "fleet": ("schemas", "common", "autoscaler.state"),
}

#: Known exceptions (importer module -> imported module), each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # Registration checks that an artifact loads and runs with the worker's own runtime loader, so that
    # "it loads here" means "a worker will load it" (a function-level import: only `fleet models` pays for it).
    ("fleet.models.checks", "workers.errors"): "the worker's runtime loader checks an artifact",
    ("fleet.models.checks", "workers.runtimes"): "the worker's runtime loader checks an artifact",
    ("fleet.models.checks_frameworks", "workers.runtimes"): "the runtimes' readers of boosters and Python classes",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    """Every module of our packages, by dotted name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` names (``a.b.C`` -> ``a.b``), or None when not ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Dotted names imported by ``module``: ``import x.y`` gives ``x.y``; ``from x import y`` gives ``x.y``
    (resolved to ``x`` when ``y`` is not a module); relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                yield f"{origin}.{alias.name}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = our_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def allowed(importer: str, imported: str) -> bool:
    own, other = importer.split(".")[0], imported.split(".")[0]
    if own == other or (importer, imported) in EXCEPTIONS:
        return True
    return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[own])


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "fleet.client.http" in graph["fleet.client"]  # relative, package __init__
    assert "workers.runtimes" in graph["fleet.models.checks"]  # inside a function


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below(package: str) -> None:
    wrong = sorted(
        f"{importer} -> {imported}"
        for importer, targets in import_graph().items()
        if importer.split(".")[0] == package
        for imported in targets
        if not allowed(importer, imported)
    )
    assert wrong == []


def test_no_service_imports_another_service_but_the_known_exceptions() -> None:
    crossing = {
        (importer, imported)
        for importer, targets in import_graph().items()
        for imported in targets
        if importer.split(".")[0] in SERVICES
        and imported.split(".")[0] in SERVICES
        and importer.split(".")[0] != imported.split(".")[0]
    }
    assert crossing <= set(EXCEPTIONS)
