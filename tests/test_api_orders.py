"""POST /v1/orders through the app, against the real database."""

import json

import pytest

from tests.conftest import count

PROBLEM = "application/problem+json"


def order(i=1, **kw):
    base = {"order_id": f"O{i}", "customer_id": f"C{i}", "channel": "tmall",
            "ordered_at": "2024-05-01T10:00:00+08:00", "amount": "99.90"}
    base.update(kw)
    return base


def post(client, auth, orders, **headers):
    return client.post("/v1/orders", json={"orders": orders}, headers={**auth, **headers})


def test_outcomes_per_record_and_totals(client, auth, conn):
    r = post(client, auth, [order(1), order(2, amount="-5"), order(3)])
    assert r.status_code == 200
    assert [x["outcome"] for x in r.json["results"]] == ["inserted", "rejected", "inserted"]
    assert r.json["results"][1] == {"index": 1, "outcome": "rejected", "channel": "tmall",
                                    "order_id": "O2", "errors": {"amount": "must be >= 0"}}
    assert r.json["totals"] == {"inserted": 2, "updated": 0, "duplicate": 0, "rejected": 1}
    assert count(conn, "SELECT count(*) FROM orders") == 2
    assert count(conn, "SELECT count(*) FROM customers") == 2  # created with their orders


def test_resend_is_duplicate_and_refund_is_update(client, auth, conn):
    post(client, auth, [order(1)])
    r = post(client, auth, [order(1)])
    assert r.json["results"][0]["outcome"] == "duplicate"
    r = post(client, auth, [order(1, status="refunded")])
    assert r.json["results"][0]["outcome"] == "updated"
    r = post(client, auth, [order(1, status="refunded", amount="50.00")])
    assert r.json["results"][0]["outcome"] == "updated"
    row = conn.execute("SELECT status, amount FROM orders").fetchone()
    assert row[0] == "refunded" and str(row[1]) == "50.00"


def test_same_order_twice_in_one_batch_collapses_to_the_last(client, auth, conn):
    batch = [order(1), order(1, status="refunded"), order(1, status="refunded")]
    r = post(client, auth, batch)
    assert [x["outcome"] for x in r.json["results"]] == ["inserted", "updated", "duplicate"]
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "refunded"
    # Resending the whole batch changes nothing: no flip back to "paid" and forward again.
    before = conn.execute("SELECT updated_at FROM orders").fetchone()[0]
    conn.commit()
    r = post(client, auth, batch)
    assert [x["outcome"] for x in r.json["results"]] == ["duplicate"] * 3
    assert conn.execute("SELECT updated_at FROM orders").fetchone()[0] == before


def test_stored_order_changed_by_a_batch_reports_the_last_record(client, auth, conn):
    post(client, auth, [order(1)])
    r = post(client, auth, [order(1, status="refunded"), order(1, status="cancelled")])
    assert [x["outcome"] for x in r.json["results"]] == ["duplicate", "updated"]
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "cancelled"


def test_every_problem_of_a_record_is_reported_at_once(client, auth):
    r = post(client, auth, [order(1, customer_id=12345, amount="ten")])
    assert set(r.json["results"][0]["errors"]) == {"customer_id", "amount"}


def test_channel_is_part_of_the_identity(client, auth, conn):
    r = post(client, auth, [order(1, channel="tmall"), order(1, channel="JD")])
    assert [x["outcome"] for x in r.json["results"]] == ["inserted", "inserted"]
    assert count(conn, "SELECT count(*) FROM orders WHERE channel = 'jd'") == 1


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("ordered_at", "2999-01-01", "more than one day in the future"),
    ("ordered_at", "1989-06-01", "before 1990-01-01"),
    ("ordered_at", "01/05/2024", "not an ISO 8601"),
    ("currency", "EUR", "must be USD (CRM_CURRENCY)"),
    ("amount", "1.999", "at most 2 decimal places"),
    ("status", "lost", "must be one of paid, refunded, cancelled"),
    ("order_id", 17, "must be a string"),
])
def test_bad_records_are_rejected_without_blocking_others(client, auth, conn, field, value,
                                                          reason):
    r = post(client, auth, [order(1, **{field: value}), order(2)])
    assert r.status_code == 200
    first, second = r.json["results"]
    assert first["outcome"] == "rejected" and reason in first["errors"][field]
    assert second["outcome"] == "inserted"
    assert count(conn, "SELECT count(*) FROM orders") == 1


def test_missing_fields_are_rejected(client, auth):
    r = post(client, auth, [{"order_id": "X"}])
    errors = r.json["results"][0]["errors"]
    assert set(errors) >= {"customer_id", "channel", "ordered_at", "amount"}


def test_more_than_1000_orders_is_413(client, auth, conn):
    r = post(client, auth, [order(i) for i in range(1001)])
    assert r.status_code == 413 and r.mimetype == PROBLEM
    assert r.json["status"] == 413 and "limit is 1000" in r.json["detail"]
    assert count(conn, "SELECT count(*) FROM orders") == 0


def test_exactly_1000_orders_is_accepted(client, auth, conn):
    r = post(client, auth, [order(i) for i in range(1000)])
    assert r.json["totals"]["inserted"] == 1000


def test_body_over_5mb_is_413(client, auth):
    big = json.dumps({"orders": [order(1, order_id="x" * 100)] * 1, "pad": "y" * (5 << 20)})
    r = client.post("/v1/orders", data=big, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.mimetype == PROBLEM


def test_malformed_json_is_400(client, auth):
    r = client.post("/v1/orders", data='{"orders": [', headers={
        **auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.mimetype == PROBLEM
    assert r.json["title"] == "Malformed JSON"


def test_wrong_content_type_is_415(client, auth):
    r = client.post("/v1/orders", data="order_id=1", headers={
        **auth, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.mimetype == PROBLEM


@pytest.mark.parametrize("body", [
    {"orders": [order(1)], "extra": 1},
    {"orders": [order(1), order(2, colour="red")]},
])
def test_unknown_fields_are_422_and_nothing_is_written(client, auth, conn, body):
    r = client.post("/v1/orders", json=body, headers=auth)
    assert r.status_code == 422 and r.mimetype == PROBLEM
    assert "unknown field" in r.json["detail"]
    assert count(conn, "SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize("body", [[], {"orders": "nope"}, {"orders": [1, 2]}, {}])
def test_wrong_envelope_is_422(client, auth, body):
    r = client.post("/v1/orders", json=body, headers=auth)
    assert r.status_code == 422 and r.mimetype == PROBLEM


def test_missing_and_invalid_keys_are_401(client, conn):
    r = client.post("/v1/orders", json={"orders": [order(1)]})
    assert r.status_code == 401 and r.mimetype == PROBLEM
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.post("/v1/orders", json={"orders": [order(1)]},
                    headers={"Authorization": "Bearer crm_nope_nope"})
    assert r.status_code == 401
    assert count(conn, "SELECT count(*) FROM orders") == 0


def test_wrong_scope_is_403(client, make_token, conn):
    token = make_token("customers:read")
    r = client.post("/v1/orders", json={"orders": [order(1)]},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json["required_scope"] == "orders:write"
    ok = make_token("orders:write")
    r = client.post("/v1/orders", json={"orders": [order(1)]},
                    headers={"Authorization": f"Bearer {ok}"})
    assert r.status_code == 200


def test_unknown_route_and_method_are_problems(client, auth):
    assert client.get("/v1/nowhere").mimetype == PROBLEM
    r = client.get("/v1/orders", headers=auth)
    assert r.status_code == 405 and r.mimetype == PROBLEM


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("amount", "١٢٣", "not a decimal number"),          # Arabic-Indic digits
    ("amount", "１２", "not a decimal number"),          # full-width digits
    ("ordered_at", "2024-05-01T10:00+20:00", "UTC offset out of range"),
    ("order_id", "a\x00b", "control characters"),
    ("customer_id", "\ud800", "control characters"),    # lone surrogate
])
def test_values_postgres_cannot_store_are_rejected_per_record(client, auth, conn, field, value,
                                                             reason):
    import json as _json

    body = _json.dumps({"orders": [order(1, **{field: value}), order(2)]})
    r = client.post("/v1/orders", data=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 200
    assert reason in r.json["results"][0]["errors"][field]
    assert r.json["results"][1]["outcome"] == "inserted"


def test_deeply_nested_json_is_400(client, auth):
    body = '{"orders": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post("/v1/orders", data=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.mimetype == PROBLEM


def test_batches_wait_for_a_bulk_import_then_get_503(settings, dsn, conn, make_token):
    """A bulk import holds the writers' lock exclusively; a batch gives up with 503."""
    import dataclasses

    from api import create_app
    from crm_service.storage.locks import lock_exclusive

    app = create_app(dataclasses.replace(settings, ingest_lock_wait_seconds=0.3), dsn=dsn)
    headers = {"Authorization": f"Bearer {make_token('orders:write')}"}
    with psycopg_connect(dsn) as importer:
        lock_exclusive(importer)
        r = app.test_client().post("/v1/orders", json={"orders": [order(1)]}, headers=headers)
        assert r.status_code == 503 and r.mimetype == PROBLEM
        assert r.headers["Retry-After"] == "5" and "bulk import" in r.json["detail"]
    r = app.test_client().post("/v1/orders", json={"orders": [order(1)]}, headers=headers)
    assert r.json["totals"]["inserted"] == 1


def psycopg_connect(dsn):
    import psycopg

    return psycopg.connect(dsn)
