"""``meta_train``'s modules import one another without a cycle (issue 26), function-local imports
included: every module can be imported first, alone, and the layers read bottom up.

The graph is built from the source with ``ast``, not by importing: an edge goes from a module to
each ``meta_train`` module it imports and to the packages above that module (whose
``__init__`` runs first), except its own packages, which are already importing. Imports under
``if TYPE_CHECKING:`` never run and are left out."""

import ast
from pathlib import Path

import pytest
from python_process import run_python

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "meta_train"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith(
        "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST) -> list[str]:
    """Every dotted name an import statement anywhere in ``tree`` loads (``from a import b``
    gives ``a.b`` and ``a``: ``b`` may be a module or a name in ``a``)."""
    names: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        stack.extend(ast.iter_child_nodes(node))
    return names


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        own_packages = {*ancestors(name), name}
        targets = set()
        for imported in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if imported in known:
                targets |= {imported, *ancestors(imported)}
        graph[name] = {t for t in targets if t in known and t not in own_packages}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path, or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_search_finds_a_cycle_and_accepts_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_local_and_type_checking_imports_are_told_apart():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from meta_train.x import Y\n"
        "def f():\n    from meta_train.z import w\n"
    )
    names = imported_names(tree)
    assert "meta_train.z" in names and "meta_train.z.w" in names
    assert "meta_train.x" not in names


def test_the_graph_sees_the_layout():
    graph = import_graph()
    assert len(graph) > 40  # every module, subpackages included
    assert "meta_train.configuration.engine" in graph["meta_train.inner_loop.unroll"]
    # importing a submodule runs its packages' __init__ first: an edge to the package too
    assert "meta_train.estimators" in graph["meta_train.inner_loop.truncation"]


def test_meta_train_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports_first_and_alone(name):
    done = run_python("-c", f"import {name}", cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
