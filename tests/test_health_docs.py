"""Probes and the OpenAPI document."""

from api import create_app
from crm_service.platform.config import load_settings
from tests.conftest import TEST_SECRET_KEY


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_readyz_is_503_without_database(tmp_path):
    settings = load_settings({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                              "CRM_POOL_MIN_SIZE": "0", "CRM_POOL_TIMEOUT": "1",
                              "CRM_SECRET_KEY": TEST_SECRET_KEY})
    app = create_app(settings, dsn=settings.database_url)
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.mimetype == "application/problem+json"
    # Every request that needs the database answers 503 with Retry-After, never 500, and
    # within the pool timeout (1 s here), not hanging.
    import time
    for method, path in (("GET", "/v1/events"), ("GET", "/v1/customers/C1/tier"),
                         ("POST", "/v1/orders")):
        t0 = time.monotonic()
        r = c.open(path, method=method, headers={"Authorization": "Bearer crm_abc_def"},
                   json={"orders": []} if method == "POST" else None)
        assert r.status_code == 503 and r.mimetype == "application/problem+json", path
        assert r.headers["Retry-After"] == "5" and time.monotonic() - t0 < 5
    app.extensions["crm"].pool.close()  # stop its background reconnection attempts
    app.extensions["crm"].reader.close()


def test_openapi_document(client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert {"/v1/orders", "/v1/customers", "/healthz", "/readyz"} <= set(spec["paths"])
    post = spec["paths"]["/v1/orders"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderBatch"}
    assert {"200", "401", "413", "422"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    schemas = spec["components"]["schemas"]
    assert {"OrderBatch", "OrderIn", "CustomerBatch", "BatchResult"} <= set(schemas)
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_docs_page(client):
    r = client.get("/docs")
    assert r.status_code == 200 and b"swagger" in r.data.lower()


def test_every_operation_documents_an_example_of_its_success_body(client):
    spec = client.get("/openapi.json").json
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in {"get", "post", "put", "delete"}:
                continue
            ok = next(code for code in op["responses"] if code.startswith("2"))
            content = op["responses"][ok].get("content", {})
            if content and not any("example" in c or "examples" in c
                                   for c in content.values()):
                missing.append(f"{method.upper()} {path}")
            body = op.get("requestBody", {}).get("content", {})
            if body and not any("example" in c for c in body.values()):
                missing.append(f"{method.upper()} {path} (request)")
    assert not missing, missing


def test_tier_fast_path_answers_what_its_schema_documents(cdnow_loaded, settings, client, auth):
    from datetime import date

    from api.schemas import CustomerTierSchema
    from crm_service.scoring import run_scoring

    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    body = client.get("/v1/customers/cdnow-0001/tier", headers=auth).json
    assert set(body) == set(CustomerTierSchema().fields)


def test_statement_timeout_bounds_every_query(dsn, conn, make_token, tmp_path):
    """A query stuck behind a lock is cancelled by CRM_STATEMENT_TIMEOUT_MS: 503, not a hang."""
    import time

    token = make_token("scores:read")
    settings = load_settings({"DATABASE_URL": dsn, "CRM_STATEMENT_TIMEOUT_MS": "300",
                              "CRM_SECRET_KEY": TEST_SECRET_KEY, "CRM_DATA_DIR": str(tmp_path),
                              "CRM_RATE_LIMIT_PER_SECOND": "0"})
    app = create_app(settings, dsn=dsn)
    svc = app.extensions["crm"]
    try:
        for pool in (svc.pool, svc.reader):  # every pooled session carries the timeout
            with pool.connection() as c:
                assert c.execute("SHOW statement_timeout").fetchone()[0] == "300ms"
        conn.execute("LOCK TABLE scoring_state IN ACCESS EXCLUSIVE MODE")  # held, uncommitted
        began = time.monotonic()
        r = app.test_client().get("/v1/segments", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.mimetype == "application/problem+json"
        assert r.headers["Retry-After"] == "5"
        assert time.monotonic() - began < 3
    finally:
        conn.rollback()
        svc.pool.close()
        svc.reader.close()
