"""The import rules of DESIGN.md §3: api -> crm_service -> models, never upward, and no circles."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "crm_service", "models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, *, first_part_only: bool = False) -> set[str]:
    """Every module ``path`` imports at run time, at the top or inside a function.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run. Lazy imports inside
    functions count: a circle held together by them is still a circle.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the body is for the type checker
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (this project imports absolutely)"
            # `from pkg import mod` imports the submodule when there is one.
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(subs or {node.module or ""})
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m.split(".")[0] for m in found} if first_part_only else found


def test_models_import_nothing_above():
    for f in (ROOT / "models").rglob("*.py"):
        assert not imports_of(f, first_part_only=True) & {"crm_service", "api", "flask",
                                                         "psycopg", "psycopg_pool"}, f


def test_service_never_imports_api_flask_marshmallow():
    for f in (ROOT / "crm_service").rglob("*.py"):
        bad = imports_of(f, first_part_only=True) & {"api", "flask", "marshmallow",
                                                     "flask_smorest"}
        assert not bad, f"{f}: {bad}"


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
    return found


def test_no_import_circles():
    graph = {name: (imports_of(path) & MODULES.keys()) - {name}
             for name, path in MODULES.items()}
    assert _circles(graph) == []


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]


# SQL lives in the storage package; the platform's connection, migration and embedded-server
# modules speak to PostgreSQL directly by their nature.
STORAGE_PACKAGES = ("crm_service.storage.",)
PLATFORM_SQL = {"crm_service.platform.db", "crm_service.platform.schema",
                "crm_service.platform.embedded"}
# Modules that still hold SQL of their own, to be split into storage modules. Empty since issue
# 18 (the lane's batched statements moved to crm_service.storage.lookups.watched_cards).
# The list may only shrink: a module that no longer holds SQL fails the test until it is removed.
NOT_YET_SPLIT: set[str] = set()
# SQL is written in upper case here (a convention the test relies on; lower-case prose does
# not trip it).
_SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE [\w.]+( \w+)? SET|DELETE\s+FROM|"
                  r"CREATE (TEMP |UNIQUE )?(TABLE|INDEX)|ALTER TABLE|DROP (TABLE|INDEX)|TRUNCATE|"
                  r"COPY \w+|WITH (RECURSIVE )?\w+ AS|SET (LOCAL|SESSION|TRANSACTION)|"
                  r"SET \w+ (=|TO)|SHOW \w+|VACUUM|ANALYZE \w+|NOTIFY|LOCK TABLE)\b")
_RUNS_SQL = {"execute", "executemany"}


def holds_sql(path: Path) -> bool:
    """Whether a module has SQL text, runs a statement or imports psycopg at run time.

    SQL text outside docstrings; a statement is any ``.execute``/``.executemany`` call.
    """
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    texts = [node.value if isinstance(node.value, str) else node.value.decode("latin-1")
             for node in ast.walk(tree) if isinstance(node, ast.Constant)
             and isinstance(node.value, str | bytes) and id(node) not in docstrings]
    runs_sql = any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and node.func.attr in _RUNS_SQL for node in ast.walk(tree))
    return runs_sql or any(_SQL.search(t) for t in texts) or bool(
        {"psycopg", "psycopg_pool"} & imports_of(path, first_part_only=True))


def test_sql_only_in_storage_modules():
    holding = {name for name, path in MODULES.items() if holds_sql(path)}
    outside = {name for name in holding
               if not name.startswith(STORAGE_PACKAGES) and name not in PLATFORM_SQL}
    assert outside - NOT_YET_SPLIT == set(), "SQL or psycopg outside the storage modules"
    assert NOT_YET_SPLIT - outside == set(), "split already: take it off NOT_YET_SPLIT"


def test_only_the_adapter_touches_gunicorn():
    """gunicorn's internals are used in one module (api.serving.gunicorn_adapter), which checks
    them when a worker starts; every other module goes through it."""
    touching = {name for name, path in MODULES.items()
                if "gunicorn" in imports_of(path, first_part_only=True)}
    assert touching == {"api.serving.gunicorn_adapter"}
