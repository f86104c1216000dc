"""The import graph, read with `ast`: no cycles, layers import downwards only, no `_private` name crosses a package.

Layers, bottom up: protocol → shell (the process shell) → router, workers → frontend (embeds the router) →
diffmesh (the CLI and `up` launcher, the only code that imports every component).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "shell", "router", "workers", "frontend", "diffmesh")
MAY_IMPORT = {  # top-level package -> the project packages its modules may import
    "protocol": {"protocol"},
    "shell": {"shell", "protocol"},
    "router": {"router", "shell", "protocol"},
    "workers": {"workers", "shell", "protocol"},
    "frontend": {"frontend", "router", "shell", "protocol"},
    "diffmesh": set(PACKAGES),
}
ALLOWED_EDGES = {  # (module, module) -> why this edge runs across the layers above
    ("router.replay", "workers.mocker.engine"): "the trace replay drives the mocker's pure scheduler in virtual time",
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package is its __init__)."""
    return {module_name(root, path): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def _absolute(name: str, current: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to: itself, or the nearest enclosing module (`a.b.func` -> `a.b`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], list[tuple[str, str, int]]]:
    """Project modules that `name` imports (at any depth of the file), and the `_private` names it takes from them."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    private: list[tuple[str, str, int]] = []  # (module, name, line)
    aliases: dict[str, str] = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                owner = _owner(alias.name, modules)
                if owner:
                    targets.add(owner)
                    aliases[alias.asname or alias.name.split(".")[0]] = owner if alias.asname else _owner(
                        alias.name.split(".")[0], modules) or owner
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module or "", name, is_package, node.level)
            for alias in node.names:
                owner = _owner(f"{source}.{alias.name}", modules)
                if owner == f"{source}.{alias.name}":  # `from pkg import submodule`
                    targets.add(owner)
                    aliases[alias.asname or alias.name] = owner
                elif _owner(source, modules):
                    targets.add(_owner(source, modules))
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((_owner(source, modules), alias.name, node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append((aliases[node.value.id], node.attr, node.lineno))
    targets.discard(name)
    return targets, private


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, list]]:
    modules = find_modules(root, packages)
    graph, private = {}, {}
    for name, path in modules.items():
        graph[name], private[name] = imports_of(name, path, modules)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
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
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    top = lambda module: module.split(".")[0]  # noqa: E731
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if top(t) not in MAY_IMPORT[top(m)] and (m, t) not in ALLOWED_EDGES)


def private_imports(private: dict[str, list]) -> list[str]:
    top = lambda module: module.split(".")[0]  # noqa: E731
    return sorted(f"{m}:{line} takes {source}.{attr}" for m, found in private.items() for source, attr, line in found
                  if top(source) != top(m))


@pytest.fixture(scope="module")
def project():
    return import_graph(ROOT)


def test_no_import_cycle_between_project_modules(project):
    graph, _ = project
    assert len(graph) > 50  # the walk found the tree
    assert cycles(graph) == []


def test_protocol_imports_nothing_of_the_project(project):
    graph, _ = project
    assert [f"{m} -> {t}" for m, ts in graph.items() if m.startswith("protocol") for t in ts
            if not t.startswith("protocol")] == []


def test_shell_imports_no_component_and_layers_import_downwards(project):
    graph, _ = project
    assert any(t.startswith("shell") for t in graph["workers.runtime"])  # the check sees real edges
    assert upward_imports(graph) == []


def test_only_the_launcher_imports_every_component(project):
    graph, _ = project
    reach = defaultdict(set)
    for module, targets in graph.items():
        reach[module.split(".")[0]] |= {t.split(".")[0] for t in targets}
    assert {"frontend", "router", "workers"} <= reach["diffmesh"]
    assert [p for p in PACKAGES if p != "diffmesh" and {"frontend", "router", "workers"} <= reach[p]] == []


def test_no_private_name_crosses_a_package(project):
    _, private = project
    assert private_imports(private) == []


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_lazy_cycle_an_upward_import_and_a_private_name(tmp_path):
    """The checks above on a tree shaped like the one this layout replaced (diffmesh/cli <-> launch <-> router/cli)."""
    _write_tree(tmp_path, {
        "diffmesh/__init__.py": "",
        "diffmesh/cli.py": "def add_flags(): pass\ndef main():\n    from diffmesh import launch\n",
        "diffmesh/launch.py": "def up():\n    from router.cli import GC\n    from diffmesh.cli import add_flags\n",
        "router/__init__.py": "",
        "router/cli.py": "GC = 1\ndef run():\n    from diffmesh.cli import _nats_config\n    import diffmesh.launch as l\n    l._run()\n",
        "protocol/__init__.py": "",
        "protocol/kv.py": "from .subjects import x\n",
        "protocol/subjects.py": "x = 1\n",
    })
    graph, private = import_graph(tmp_path, ("diffmesh", "router", "protocol"))
    assert graph["protocol.kv"] == {"protocol.subjects"}  # relative imports resolve
    assert cycles(graph) == [["diffmesh.cli", "diffmesh.launch", "router.cli"]]
    assert upward_imports(graph) == ["router.cli -> diffmesh.cli", "router.cli -> diffmesh.launch"]
    assert private_imports(private) == ["router.cli:3 takes diffmesh.cli._nats_config",
                                        "router.cli:5 takes diffmesh.launch._run"]
