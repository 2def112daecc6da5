"""No import cycle among app's modules, counting the imports a module runs when it is loaded
(module-level `import` and `from` statements; those inside functions are left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import app

PACKAGE = Path(app.__file__).parent


def modules() -> dict[str, Path]:
    """Every module under app/, by its dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def loaded_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when this body runs: inside `if`, `try`, `with` or a
    class body too, but not inside a function, which runs only when called."""
    found: list[ast.Import | ast.ImportFrom] = []
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            found.append(statement)
        elif not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            for child in ast.iter_child_nodes(statement):
                if isinstance(child, ast.ExceptHandler | ast.match_case):
                    found += loaded_imports(child.body)
            for name in ("body", "orelse", "finalbody"):
                block = getattr(statement, name, None)
                if isinstance(block, list):
                    found += loaded_imports(block)
    return found


def imported_names(
    module: str, statement: ast.Import | ast.ImportFrom, known: set[str]
) -> set[str]:
    """The app modules a statement loads: the named module or package, a submodule named in a
    `from` import, and the packages above them that are not above `module` already."""
    if isinstance(statement, ast.Import):
        targets = {alias.name for alias in statement.names}
    else:
        base = statement.module or ""
        if statement.level:
            here = module.split(".")
            is_package = PACKAGE.joinpath(*here[1:], "__init__.py").exists()
            anchor = here[: len(here) - statement.level + is_package]
            base = ".".join([*anchor, base] if base else anchor)
        targets = {base} | {f"{base}.{alias.name}" for alias in statement.names}
    loaded = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name in known and not module.startswith(name + ".") and name != module:
                loaded.add(name)
    return loaded


def import_graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {
        module: set().union(
            *(
                imported_names(module, statement, names)
                for statement in loaded_imports(ast.parse(path.read_text()).body)
            )
        )
        for module, path in known.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as the path that closes it (first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_under_app_imports_itself_round_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_like_the_old_reconcile_status_vrrp_one_is_found():
    """reconcile -> status -> vrrp -> reconcile, which a function-local import in vrrp once
    dodged, is reported when status imports vrrp again."""
    graph = import_graph()
    assert "app.cluster.status" in graph["app.replication.reconcile"]
    assert "app.replication.reconcile" in graph["app.cluster.vrrp"]
    graph["app.cluster.status"].add("app.cluster.vrrp")
    assert find_cycle(graph) == [
        "app.cluster.status",
        "app.cluster.vrrp",
        "app.replication.reconcile",
        "app.cluster.status",
    ]


def test_imports_inside_blocks_count_and_those_inside_functions_do_not():
    tree = ast.parse(
        "import app.settings\n"
        "try:\n    from app.cluster import vip\nexcept ImportError:\n    pass\n"
        "if True:\n    from .postfix import queue\n"
        "def later():\n    from app.replication import reconcile\n"
    )
    known = set(modules())
    found = set().union(
        *(imported_names("app.cli", statement, known) for statement in loaded_imports(tree.body))
    )
    assert found == {
        "app.settings",
        "app.cluster",
        "app.cluster.vip",
        "app.postfix",
        "app.postfix.queue",
    }
