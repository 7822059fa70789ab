"""The import graph of ``src/saelab``: no circle, and config knows no science.

The graph is read from the source with ``ast`` (no module is imported, so this runs in well
under a second): absolute and relative imports, at module level and inside functions or
``TYPE_CHECKING`` blocks alike. Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``,
so an import reaches the ``__init__`` of every package above the module it names, except the
importer's own packages (a package's ``__init__`` importing its submodules is the usual shape)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "saelab"

#: The modules ``saelab.config`` may import: leaves that hold no model, SAE or analysis code.
CONFIG_ALLOWED = {
    "saelab.hooks",
    "saelab.groups",
    "saelab.runtime",
    "saelab.schema",
    "saelab.sections",
    "saelab.sections_darkmatter",
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of ``path`` may refer to (module or attribute)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the saelab modules it imports (directly, or as a package above one)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        edges: set[str] = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the named module and the packages above it
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate not in own_packages:
                    edges.add(candidate)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    """The parser is what the assertions below rest on: check it on known edges of each kind."""
    graph = import_graph()
    assert {"saelab.config", "saelab.checks", "saelab.sweeps"} <= set(graph)
    assert "saelab.config" in graph["saelab.sweeps"]  # module-level absolute
    assert "saelab.darkmatter.components" in graph["saelab.darkmatter.settings"]  # in a function
    assert "saelab.config" in graph["saelab.models.tiny"]  # under TYPE_CHECKING
    assert "saelab.saes.base" in graph["saelab.saes"]  # a package's __init__
    assert "saelab.saes.pretrained" in graph["saelab.saes.settings"]
    assert "saelab.saes" not in graph["saelab.saes.io"]  # its own package: not an edge
    assert "saelab.trajectories" in graph["saelab.checks"]  # the package above a named module


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / ROOT / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from ..top import x\n    from .b import y\n")
    names = imported_names("saelab.sub.a", pkg / "a.py")
    assert {"saelab.top", "saelab.top.x", "saelab.sub.b", "saelab.sub.b.y"} <= names
    assert {"saelab.sub", "saelab.sub.a"} <= imported_names("saelab.sub", pkg / "__init__.py")


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_saelab_imports_form_no_circle():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import circle: " + " -> ".join(cycle))


def test_config_imports_no_science():
    """``saelab.config`` imports only leaves: no model, SAE or analysis module."""
    graph = import_graph()
    extra = graph["saelab.config"] - CONFIG_ALLOWED
    assert not extra, f"saelab.config imports {sorted(extra)}; allowed: {sorted(CONFIG_ALLOWED)}"
    for leaf in CONFIG_ALLOWED:
        extra = graph[leaf] - CONFIG_ALLOWED
        assert not extra, f"{leaf} must stay a leaf; it imports {sorted(extra)}"


def test_no_module_is_over_400_lines():
    """Issue 11's size rule: a module that grows past 400 lines is split along its seams."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_names().items()}
    assert len(sizes) > 50
    assert not {name: n for name, n in sizes.items() if n > 400}
