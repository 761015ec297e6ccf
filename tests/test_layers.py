"""The project's layers import one way (docs/ARCHITECTURE.md): `pab` core <- `pab.runtime` <- serving.

A static scan (no module is imported) of every module under pab/, deployments/ and serve_app/ collects every import:
module level, function-local, lazy (`_EXPORTS` tables and `importlib.import_module` of a literal) and, reported
apart, those under `if TYPE_CHECKING:`. A package is a directory with an `__init__.py` (pab core is the package
`pab`, then `pab.parallel`, `pab.runtime.request`, ..., `serve_app.commands`, `deployments`). The rules:
(a) no import circle between packages (TYPE_CHECKING imports excluded: they never run);
(b) pab core (`pab`, `pab.parallel`) imports no ray, fastapi, starlette, pab.runtime, serve_app, deployments or tests;
(c) pab.runtime imports no ray, fastapi, starlette, serve_app, deployments or tests;
(d) the lower serving modules (serve_app config, schemas, errors, store) import no deployments;
(e) no module outside tests/ imports tests.
Every failure lists the offending edges (file:line, source -> target, and how it is imported) or cycles.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

ROOTS = ("pab", "deployments", "serve_app")
CORE = ("pab", "pab.parallel")
LOWER_SERVING = ("serve_app.config", "serve_app.schemas", "serve_app.errors", "serve_app.store")
RUNTIME_EDGES = ("module", "function", "lazy")  # TYPE_CHECKING imports never run


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    """A project module, or the top-level name of a third-party one ("ray")."""
    path: str
    line: int
    how: str
    """"module", "function" (function-local), "lazy" or "type-checking"."""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target} ({self.how})"


def project_modules(root: Path, roots: tuple[str, ...] = ROOTS) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package `__init__`), for every module under `roots`."""
    modules = {}
    for top in roots:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def package_of(module: str, modules: dict[str, tuple[Path, bool]]) -> str:
    """The package a module belongs to: itself for an `__init__`, else the package it sits in."""
    while module not in modules or not modules[module][1]:
        module = module.rpartition(".")[0]
    return module


class _Collector(ast.NodeVisitor):
    """Every import of one module, with where it happens."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, tuple[Path, bool]], path: str) -> None:
        self.module, self.modules, self.path = module, modules, path
        self.package = module if is_package else module.rpartition(".")[0]
        self.edges: list[Edge] = []
        self.how = ["module"]

    def _target(self, name: str) -> str:
        """The longest project module prefix of `name`, else its top-level package (third party)."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        return parts[0]

    def _add(self, name: str, node: ast.AST, how: str | None = None) -> None:
        self.edges.append(Edge(self.module, self._target(name), self.path, node.lineno, how or self.how[-1]))

    def _absolute(self, name: str | None, level: int) -> str:
        base = self.package.split(".")[: len(self.package.split(".")) - level + 1] if level else []
        return ".".join([*base, *([name] if name else [])])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module, node.level)
        for alias in node.names:
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.modules else base, node)

    def _nested(self, node: ast.AST, how: str) -> None:
        self.how.append(how)
        self.generic_visit(node)
        self.how.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "function" if self.how[-1] != "type-checking" else "type-checking")

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self._nested(node, "type-checking")
        else:
            self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        """`_EXPORTS = {"name": "module"}`: the lazy `__getattr__` tables of pab and pab.runtime.pipelines."""
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and isinstance(node.value, ast.Dict):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    text = value.value
                    if text.startswith("."):  # relative to the package (`pab._lazy.lazy_exports` takes both)
                        name = f"{self.package}{text}"
                    else:
                        name = text if text.split(".")[0] in ROOTS else f"{self.package}.{text}"
                    self._add(name, value, "lazy")
        self.generic_visit(node)

    visit_AnnAssign = visit_Assign  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "import_module" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            self._add(node.args[0].value, node, "lazy")
        self.generic_visit(node)


def scan(root: Path = REPO_ROOT, roots: tuple[str, ...] = ROOTS) -> tuple[list[Edge], dict[str, tuple[Path, bool]]]:
    modules = project_modules(root, roots)
    edges = []
    for module, (path, is_package) in modules.items():
        collector = _Collector(module, is_package, modules, str(path.relative_to(root)))
        collector.visit(ast.parse(path.read_text(), str(path)))
        edges += [e for e in dict.fromkeys(collector.edges) if e.target != module]  # `from x import a, b`: once
    return edges, modules


def package_cycles(edges: list[Edge], modules: dict[str, tuple[Path, bool]]) -> list[list[str]]:
    """Strongly connected sets of packages (more than one) in the graph of runtime imports (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if e.how in RUNTIME_EDGES and e.target in modules:
            source, target = package_of(e.source, modules), package_of(e.target, modules)
            if source != target:
                graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _describe(cycles: list[list[str]], edges: list[Edge], modules: dict[str, tuple[Path, bool]]) -> str:
    lines = []
    for cycle in cycles:
        lines.append("cycle: " + " <-> ".join(cycle))
        lines += [f"  {e}" for e in edges if e.how in RUNTIME_EDGES and e.target in modules
                  and package_of(e.source, modules) in cycle and package_of(e.target, modules) in cycle
                  and package_of(e.source, modules) != package_of(e.target, modules)]
    return "\n".join(lines)


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _report(found: list[Edge]) -> str:
    """The edges grouped by how they are imported, TYPE_CHECKING ones last."""
    order = {"module": 0, "lazy": 1, "function": 2, "type-checking": 3}
    return "\n".join(str(e) for e in sorted(found, key=lambda e: (order[e.how], e.path, e.line)))


@pytest.fixture(scope="module")
def graph() -> tuple[list[Edge], dict[str, tuple[Path, bool]]]:
    return scan()


def test_the_scan_sees_every_kind_of_import(graph) -> None:
    """The scanner's own check: one known import of each kind is found (else the rules below would pass vacuously)."""
    edges, modules = graph
    assert {"pab", "pab.parallel", "pab.runtime.request", "serve_app.commands", "deployments"} <= {
        package_of(m, modules) for m in modules}
    found = {(e.source, e.target, e.how) for e in edges}
    assert ("pab.runtime.pipelines.generator", "pab.hooks", "module") in found
    assert ("pab", "pab.hooks", "lazy") in found  # pab/__init__'s _EXPORTS table
    assert ("pab.runtime.request.params", "diffusers", "type-checking") in found
    assert any(how == "function" and source.startswith("pab.runtime.tools") for source, _, how in found)


def test_a_cycle_is_found_and_named(tmp_path) -> None:
    for package, body in {"a": "from b import x\n", "b": "def f():\n    import a.m\n", "c": "import a\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(body)
    (tmp_path / "a" / "m.py").write_text("")
    edges, modules = scan(tmp_path, ("a", "b", "c"))
    cycles = package_cycles(edges, modules)
    assert cycles == [["a", "b"]]
    assert "b/__init__.py:2: b -> a.m (function)" in _describe(cycles, edges, modules)


def test_no_import_cycle_in_pab(graph) -> None:
    edges, modules = graph
    cycles = [c for c in package_cycles(edges, modules) if any(_under(p, ("pab",)) for p in c)]
    assert not cycles, _describe(cycles, edges, modules)


def test_no_import_cycle_in_serving(graph) -> None:
    edges, modules = graph
    cycles = [c for c in package_cycles(edges, modules) if not any(_under(p, ("pab",)) for p in c)]
    assert not cycles, _describe(cycles, edges, modules)


def test_pab_core_imports_only_downward(graph) -> None:
    edges, modules = graph
    found = [e for e in edges if package_of(e.source, modules) in CORE
             and _under(e.target, ("ray", "fastapi", "starlette", "pab.runtime", "serve_app", "deployments", "tests"))]
    assert not found, "pab core must import only torch, diffusers and itself:\n" + _report(found)


def test_runtime_imports_no_serving(graph) -> None:
    edges, modules = graph
    found = [e for e in edges if _under(e.source, ("pab.runtime",))
             and _under(e.target, ("ray", "fastapi", "starlette", "serve_app", "deployments", "tests"))]
    assert not found, "pab.runtime must not import serving or test code:\n" + _report(found)


def test_lower_serving_modules_do_not_import_deployments(graph) -> None:
    edges, modules = graph
    found = [e for e in edges if e.source in LOWER_SERVING and _under(e.target, ("deployments",))]
    assert not found, "serve_app's config, schemas, errors and store sit below the deployments:\n" + _report(found)


def test_nothing_outside_tests_imports_tests(graph) -> None:
    edges, _ = graph
    found = [e for e in edges if _under(e.target, ("tests",))]
    assert not found, _report(found)


def _explained(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or on a line above it within its block of imports."""
    if "#" in lines[line - 1]:
        return True
    for text in reversed(lines[: line - 1]):
        stripped = text.strip()
        if stripped.startswith("#"):
            return True
        if not stripped.startswith(("from ", "import ")) and stripped:
            return False
    return False


def test_function_local_imports_in_pab_say_why(graph) -> None:
    """Function-local imports in pab/ exist only to keep a process torch-free or a start-up fast (not to dodge an
    import circle, which the tests above forbid); each says so in a comment by it."""
    edges, _ = graph
    local = [e for e in edges if e.how == "function" and _under(e.source, ("pab",))]
    unexplained = [e for e in local if not _explained((REPO_ROOT / e.path).read_text().splitlines(), e.line)]
    assert not unexplained, "function-local imports without a reason:\n" + _report(unexplained)
