"""The shape of the code: layers that import one way, a standalone `workers/`, every SQL statement in
`pipeline/platform/`, small files and functions.

Imports are read with `ast` from every module of `pipeline/` and `workers/`, function-level imports included (they
hold cycles together just as well); imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "workers")
# workers/ runs inside Ray workers: it may use the shared exception classes and nothing else of the driver.
WORKERS_MAY_IMPORT = {"pipeline.exceptions"}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
SQL = re.compile(r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|"
                 r"CREATE\s+(TABLE|(UNIQUE\s+)?INDEX|TRIGGER|VIEW)\s|DROP\s+(TABLE|INDEX)\s)", re.S)  # upper-case keywords, as every statement of the project is written


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to: the longest known prefix."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` is an import of the module; `from module import name`, of the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    """A package's `__init__` may re-export its modules; then none of them may import the package back."""
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_workers_import_nothing_of_the_driver_but_its_exceptions():
    wrong = {m: sorted(b for b in bs if b.startswith("pipeline") and b not in WORKERS_MAY_IMPORT)
             for m, bs in GRAPH.items() if m.startswith("workers")}
    assert {m: bs for m, bs in wrong.items() if bs} == {}


def test_importing_the_exceptions_module_loads_no_other_module_of_the_driver():
    """`pipeline/__init__.py` exports lazily: a worker importing `pipeline.exceptions` does not pull in the API,
    the sessions or the platform."""
    assert GRAPH["pipeline"] <= {"pipeline.exceptions"}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_sql_statement_lives_in_the_platform_package():
    found = []
    for module, path in MODULES.items():
        if module.startswith("pipeline.platform"):
            continue
        tree = ast.parse(path.read_text())
        found += [f"{path.relative_to(ROOT)}:{line}" for line, text in _strings(tree) if SQL.match(text)]
    assert found == []


def test_the_sql_detector_sees_sql():
    assert SQL.match("SELECT item_key FROM upload_job_items WHERE job_id = ?")
    assert SQL.match("\n    INSERT INTO t (a) VALUES (?)")
    assert SQL.match("CREATE TABLE IF NOT EXISTS x (a)")
    assert not SQL.match("select the frames from the video")
    assert not SQL.match("an UPDATE of the annotation")
    assert not SQL.match("SELECTed frames")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_stay_small(module):
    path = MODULES[module]
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"
    tree = ast.parse(text)
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_declares_its_public_names(module):
    tree = ast.parse(MODULES[module].read_text())
    declared = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
                   or isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == "__all__"
                   for n in tree.body)
    assert declared, f"{module} has no __all__"
