"""The import rule of DESIGN.md §3: api -> crm_service -> models, never upward."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORAGE = {"db", "embedded", "schema", "order_store", "customer_store",
           "api_keys", "locks", "idempotency", "session", "summary", "runs", "publishing",
           "policies", "reads", "retention", "housekeeping"}


def runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()

    def visit(node, guarded=False):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree)
    return found


def test_models_import_nothing_above():
    for f in (ROOT / "models").rglob("*.py"):
        assert not runtime_imports(f) & {"crm_service", "api", "flask", "psycopg"}, f


def test_service_never_imports_api_flask_marshmallow():
    for f in (ROOT / "crm_service").rglob("*.py"):
        bad = runtime_imports(f) & {"api", "flask", "marshmallow", "flask_smorest"}
        assert not bad, f"{f}: {bad}"


def test_only_storage_modules_import_psycopg():
    for f in (ROOT / "crm_service").rglob("*.py"):
        if "psycopg" in runtime_imports(f) or "psycopg_pool" in runtime_imports(f):
            assert f.stem in STORAGE, f"{f.name} imports psycopg at run time"
