"""The authorization matrix: every operation in the OpenAPI document, called with every scope,
with no key, a malformed key, an unknown key and a revoked key: 0 unexpected 2xx."""

from __future__ import annotations

import pytest

from crm_service.access import api_keys
from crm_service.vocabulary import SCOPES

# Which scopes (besides admin, which may do everything) an operation accepts.
ALLOWED: dict[str, set[str]] = {
    "POST /v1/orders": {"orders:write"},
    "POST /v1/customers": {"customers:write"},
    "GET /v1/customers": {"scores:read"},
    "GET /v1/models/active": {"scores:read"},
    "POST /v1/scoring-runs": {"runs:write"},
    "GET /v1/scoring-runs": {"scores:read"},
    "GET /v1/scoring-runs/{run_id}": {"scores:read"},
    "POST /v1/predictions": {"scores:read"},
    "GET /v1/scoring-runs/{run_id}/plots/{name}.svg": {"scores:read"},
    "GET /v1/customers/{customer_id}/scores": {"scores:read"},
    "GET /v1/segments": {"scores:read"},
    "GET /v1/customers/{customer_id}/tier": {"scores:read"},
    "GET /v1/customers/{customer_id}": {"scores:read", "customers:read"},
    "DELETE /v1/customers/{customer_id}": set(),
    "GET /v1/customers/{customer_id}/export": {"customers:read"},
    "GET /v1/customers/search": {"customers:read"},
    "POST /v1/customers/{customer_id}/merge": {"customers:write"},
    "POST /v1/customers/{customer_id}/unmerge": {"customers:write"},
    "GET /v1/customers/{customer_id}/merges": {"customers:read"},
    "GET /v1/identity-candidates": {"customers:read"},
    "GET /v1/events": {"scores:read"},
    "GET /v1/tier-policy": {"scores:read"},
    "PUT /v1/tier-policy": set(),
    "GET /v1/webhooks": {"webhooks:write"},
    "POST /v1/webhooks": {"webhooks:write"},
    "GET /v1/webhooks/{webhook_id}": {"webhooks:write"},
    "DELETE /v1/webhooks/{webhook_id}": {"webhooks:write"},
    "POST /v1/webhooks/{webhook_id}/enable": {"webhooks:write"},
    "GET /v1/webhooks/{webhook_id}/deliveries": {"webhooks:write"},
    "GET /metrics": {"metrics:read"},
}
OPEN = {"GET /healthz", "GET /readyz"}

# Valid requests, so a refusal can only come from authorization.
BODIES = {
    "POST /v1/orders": {"orders": [{"order_id": "M-1", "customer_id": "M1", "channel": "jd",
                                    "ordered_at": "2024-05-01T10:00:00+00:00",
                                    "amount": "10", "currency": "USD"}]},
    "POST /v1/customers": {"customers": [{"customer_id": "M1"}]},
    "POST /v1/scoring-runs": {"as_of": "2024-05-02"},
    "POST /v1/predictions": {"cases": [{"frequency": 2, "recency": 10, "T": 20}]},
    "PUT /v1/tier-policy": {},
    "POST /v1/webhooks": {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"]},
    "POST /v1/customers/{customer_id}/merge": {"from": ["M2"]},
    "POST /v1/customers/{customer_id}/unmerge": {},
}
QUERIES = {"GET /v1/customers/search": "?email=a@example.com"}
PARAMS = {"customer_id": "M1", "run_id": "1", "name": "p_alive", "webhook_id": "1"}


def operations(client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").get_json()
    return [(method.upper(), path) for path, ops in spec["paths"].items()
            for method in ops if method in ("get", "post", "put", "patch", "delete")]


def call(client, method: str, path: str, headers: dict[str, str]):
    op = f"{method} {path}"
    url = path
    for name, value in PARAMS.items():
        url = url.replace("{" + name + "}", value)
    url += QUERIES.get(op, "")
    kwargs = {"json": BODIES[op]} if op in BODIES else {}
    return client.open(url, method=method, headers=headers, **kwargs)


def test_every_operation_is_in_the_matrix(client):
    ops = {f"{m} {p}" for m, p in operations(client)}
    assert ops == set(ALLOWED) | OPEN


def test_every_operation_with_every_credential(client, conn):
    keys: dict[str, dict[str, str]] = {}
    for scope in SCOPES:
        _, token = api_keys.create_key(conn, f"matrix {scope}", [scope])
        keys[scope] = {"Authorization": f"Bearer {token}"}
    key, token = api_keys.create_key(conn, "matrix revoked", ["admin"])
    api_keys.revoke_key(conn, key.id)
    conn.commit()
    prefix = token.rsplit("_", 1)[0]
    refused = {
        "no key": {},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "wrong scheme": {"Authorization": f"Basic {token}"},
        "unknown key": {"Authorization": f"Bearer {prefix}_{'A' * 43}"},
        "revoked": {"Authorization": f"Bearer {token}"},
        "empty bearer": {"Authorization": "Bearer "},
    }
    unexpected, calls = [], 0
    for method, path in operations(client):
        op = f"{method} {path}"
        if op in OPEN:
            continue
        for who, headers in refused.items():
            r = call(client, method, path, headers)
            calls += 1
            if r.status_code != 401 or r.mimetype != "application/problem+json":
                unexpected.append((op, who, r.status_code))
        for scope, headers in keys.items():
            r = call(client, method, path, headers)
            calls += 1
            allowed = scope == "admin" or scope in ALLOWED[op]
            if allowed and r.status_code in (401, 403):
                unexpected.append((op, scope, r.status_code))
            if not allowed and (r.status_code != 403
                                or r.mimetype != "application/problem+json"):
                unexpected.append((op, scope, r.status_code))
            assert r.status_code < 500, (op, scope, r.get_data(as_text=True)[:300])
    assert calls > 200
    assert unexpected == []


@pytest.mark.parametrize(("path", "record"), [
    ("/v1/orders", {"order_id": "M-2", "customer_id": "M2", "channel": "jd",
                    "ordered_at": "2024-05-01T10:00:00+00:00", "amount": "10",
                    "currency": "USD", "tier": "high_value"}),
    ("/v1/orders", {"order_id": "M-3", "customer_id": "M3", "channel": "jd",
                    "ordered_at": "2024-05-01T10:00:00+00:00", "amount": "10",
                    "currency": "USD", "run_id": 7}),
    ("/v1/customers", {"customer_id": "M4", "clv_12m": 99999}),
    ("/v1/customers", {"customer_id": "M5", "tier": "high_value"}),
    ("/v1/customers", {"customer_id": "M6", "churn_probability": 0.0}),
])
def test_computed_fields_cannot_be_written(client, conn, make_token, path, record):
    headers = {"Authorization": f"Bearer {make_token('admin')}"}
    key = "orders" if path == "/v1/orders" else "customers"
    r = client.post(path, json={key: [record]}, headers=headers)
    if r.status_code == 200:
        result = r.get_json()["results"][0]
        assert result["outcome"] == "rejected", result
    else:
        assert r.status_code == 422
    row = conn.execute("SELECT count(*) FROM customers WHERE customer_id = %s",
                       (record["customer_id"],)).fetchone()
    conn.commit()
    assert row[0] == 0


def test_authentication_comes_before_validation(client, make_token):
    """An anonymous or under-scoped client gets 401/403, never a validation answer."""
    reader = {"Authorization": f"Bearer {make_token('customers:read')}"}
    for method, path in operations(client):
        op = f"{method} {path}"
        if op in OPEN:
            continue
        url = path
        for name, value in PARAMS.items():  # invalid string ids, too
            url = url.replace("{" + name + "}", "x" * 300 if name.endswith("_id")
                              and name != "run_id" else value)
        url += "?limit=-5&after=zz&sort=nope&email=&status=bogus"
        kwargs = {"json": {"nonsense": [1]}} if method in ("POST", "PUT") else {}
        r = client.open(url, method=method, **kwargs)
        assert r.status_code == 401, (op, r.status_code)
        if not ({"customers:read"} & ALLOWED[op]):
            r = client.open(url, method=method, headers=reader, **kwargs)
            assert r.status_code == 403, (op, r.status_code)
    # Not JSON at all: still 401 first.
    r = client.post("/v1/orders", data="a,b", content_type="text/csv")
    assert r.status_code == 401
