"""The package's layout: no import circle in livesync/ (the CLI included), lazy imports counted.

The graph is built from the AST of every module: ``import`` and ``from ... import``
statements anywhere in a module (imports inside functions too), except those under
``if TYPE_CHECKING:``, which never run; a second test counts those too, so that even the
type checker's view of the package has no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import livesync

PACKAGE = Path(livesync.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(*, typing: bool = False) -> dict[str, set[str]]:
    """Module -> the livesync modules it imports (with ``typing``, those under ``if TYPE_CHECKING:`` too)."""
    modules = module_names()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skipped = {
            id(node)
            for block in ast.walk(tree)
            if not typing and isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for statement in block.body
            for node in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [*submodules, base]
            else:
                continue
            graph[name].update(t for t in map(owner, targets) if t and t != name and t.startswith("livesync"))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_livesync_has_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_livesync_has_no_import_circle_counting_imports_for_type_checking_only() -> None:
    assert circles(import_graph(typing=True)) == []


def test_cli_command_modules_import_only_the_shared_app_module_of_the_cli() -> None:
    graph = import_graph()
    commands = [name for name in graph if name.startswith("livesync.cli.") and name != "livesync.cli.app"]
    assert commands, "no command modules found under livesync/cli/"
    for name in commands:
        assert {m for m in graph[name] if m == "livesync.cli" or m.startswith("livesync.cli.")} <= {
            "livesync.cli.app"
        }, name
