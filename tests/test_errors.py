"""One error hierarchy, mapped once: every error the service raises on purpose is a CrmError."""

import ast
import importlib
from pathlib import Path

import pytest

from crm_service import errors

ROOT = Path(__file__).resolve().parent.parent


def _service_modules() -> list[str]:
    names = []
    for f in sorted((ROOT / "crm_service").rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _defined_exceptions() -> list[type[BaseException]]:
    found = []
    for name in _service_modules():
        module = importlib.import_module(name)
        for node in ast.parse(Path(module.__file__).read_text()).body:
            if isinstance(node, ast.ClassDef):
                cls = getattr(module, node.name)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    return found


def test_every_service_error_is_a_crm_error():
    defined = _defined_exceptions()
    assert len(defined) > 15  # the walk found them
    assert [c.__qualname__ for c in defined if not issubclass(c, errors.CrmError)] == []


def test_every_error_has_one_answer():
    by_problem: dict[str, int] = {}
    for cls in _defined_exceptions():
        if cls.problem is None:
            assert cls.status == 500, cls  # internal: a plain 500, the detail only in the log
            continue
        assert 400 <= cls.status < 600 and cls.title, cls
        assert by_problem.setdefault(cls.problem, cls.status) == cls.status, cls


@pytest.mark.parametrize("raise_it, status, problem", [
    (lambda: errors.IngestionBusyError("paused"), 503, "ingestion-busy"),
    (lambda: errors.RunAlreadyPublishedError("run 3 already has a published partition"), 409,
     "run-already-published"),
    (lambda: errors.ConfigError("CRM_SECRET_KEY is required"), 500, None),
])
def test_the_one_handler_answers_from_the_class(settings, raise_it, status, problem):
    from api import create_app

    app = create_app(settings)

    @app.get("/v1/_raise")
    def _raise():
        raise raise_it()

    resp = app.test_client().get("/v1/_raise")
    assert resp.status_code == status
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    if problem is None:
        assert body["detail"] == "an unexpected error occurred"  # the detail stays in the log
        assert "CRM_SECRET_KEY" not in resp.get_data(as_text=True)
    else:
        assert body["type"].endswith("/" + problem)
        assert (resp.headers.get("Retry-After") == "5") == (status == 503)
