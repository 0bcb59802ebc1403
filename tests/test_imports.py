"""Imports inside segkit go one way: walk every module's `import` / `from` statements (those inside functions
too) with `ast`, build the package's import graph and fail naming a cycle. Imports under `if TYPE_CHECKING:`
never run, so they are left out."""
import ast
from pathlib import Path

import segkit

PACKAGE = Path(segkit.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__); folders
    without an __init__.py (kernel templates) hold resources, not modules."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        folders = path.relative_to(PACKAGE).parents
        if not all((PACKAGE / folder / "__init__.py").is_file() for folder in folders):
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from a import b` imports a.b when b is a module, else a name from a
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import segkit.data.io` -> segkit.data.io
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) block."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    colour = {n: 0 for n in graph}  # 0 unseen, 1 on the current path, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == 0:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "segkit.runs" in graph["segkit.train"]
    assert "segkit.train" in graph["segkit.pipeline"]  # imported inside a function
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import io\nif TYPE_CHECKING:\n"
                      "    from segkit.runs import RunDir\ndef f():\n    import segkit.data.cache\n")
    known = {"segkit.data.io", "segkit.data.cache", "segkit.runs", "segkit.data.mod"}
    assert imported_modules("segkit.data.mod", source, known) == {"segkit.data.io", "segkit.data.cache"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_submission_formats_are_found_on_the_adapter_side():
    """The adapters import the submission module (base.py at run time, not only for type checking), so the
    name -> format lookup living in submission.py again would close a circle this test file sees."""
    graph = import_graph()
    assert "segkit.submission" in graph["segkit.data.competitions.base"]
    assert not any(m.startswith("segkit.data.competitions") for m in graph["segkit.submission"])
    assert find_cycle({**graph, "segkit.submission": graph["segkit.submission"] | {"segkit.data.competitions.base"}})
