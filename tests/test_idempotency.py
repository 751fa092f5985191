"""Idempotency-Key on POST /v1/orders."""

import hashlib

from tests.conftest import count
from tests.test_api_orders import order


def send(client, auth, orders, key):
    return client.post("/v1/orders", json={"orders": orders},
                       headers={**auth, "Idempotency-Key": key})


def test_replay_returns_stored_bytes_and_writes_nothing(client, auth, conn):
    first = send(client, auth, [order(1), order(2)], "k-1")
    assert first.status_code == 200
    # Change the database behind the key's back: a replay must not re-run the batch.
    conn.execute("DELETE FROM orders")
    conn.commit()
    again = send(client, auth, [order(1), order(2)], "k-1")
    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count(conn, "SELECT count(*) FROM orders") == 0


def test_same_key_different_body_is_422(client, auth, conn):
    send(client, auth, [order(1)], "k-2")
    r = send(client, auth, [order(1, amount="1.00")], "k-2")
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert "different request" in r.json["detail"]
    assert str(conn.execute("SELECT amount FROM orders").fetchone()[0]) == "99.90"


def test_same_key_while_running_is_409(client, auth, conn, app):
    import json as _json

    from crm_service.storage import idempotency

    key_id = auth["Authorization"].split("_")[1]
    body = _json.dumps({"orders": [order(1)]}).encode()
    # What a concurrent first request leaves behind while it works: a fresh 'running' claim.
    r0 = client.post("/v1/orders", data=body, headers={**auth, "Content-Type": "application/json",
                                                     "Idempotency-Key": "other"})
    assert r0.status_code == 200
    conn.execute(
        "INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash, state)"
        " VALUES (%s, 'k-3', %s, 'running')",
        (key_id, idempotency.request_fingerprint("POST", "/v1/orders", body)))
    conn.commit()
    r = client.post("/v1/orders", data=body, headers={**auth, "Content-Type": "application/json",
                                                    "Idempotency-Key": "k-3"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"


def test_abandoned_claim_is_taken_over(client, auth, conn):
    key_id = auth["Authorization"].split("_")[1]
    conn.execute(
        "INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash, state,"
        " created_at) VALUES (%s, 'k-4', %s, 'running', now() - interval '1 hour')",
        (key_id, hashlib.sha256(b"x").digest()))
    conn.commit()
    r = send(client, auth, [order(1)], "k-4")
    assert r.status_code == 200 and r.json["totals"]["inserted"] == 1


def test_records_are_kept_24h_then_expire(client, auth, conn):
    send(client, auth, [order(1)], "k-5")
    conn.execute("UPDATE idempotency_records SET created_at = now() - interval '23 hours'")
    conn.commit()
    assert send(client, auth, [order(1, amount="2.00")], "k-5").status_code == 422
    conn.execute("UPDATE idempotency_records SET created_at = now() - interval '25 hours'")
    conn.commit()
    r = send(client, auth, [order(1, amount="2.00")], "k-5")
    assert r.status_code == 200 and r.json["results"][0]["outcome"] == "updated"


def test_keys_are_scoped_per_api_key(client, make_token):
    a = {"Authorization": f"Bearer {make_token('orders:write')}"}
    b = {"Authorization": f"Bearer {make_token('orders:write')}"}
    assert send(client, a, [order(1)], "shared").status_code == 200
    assert send(client, b, [order(2)], "shared").json["totals"]["inserted"] == 1


def test_bad_keys_are_400(client, auth, conn):
    assert send(client, auth, [order(1)], "x" * 256).status_code == 400
    assert send(client, auth, [order(1)], "has space").status_code == 400
    assert count(conn, "SELECT count(*) FROM orders") == 0


def test_failed_request_does_not_burn_the_key(client, auth):
    r = client.post("/v1/orders", data="{", headers={**auth, "Content-Type": "application/json",
                                                     "Idempotency-Key": "k-6"})
    assert r.status_code == 400
    assert send(client, auth, [order(1)], "k-6").status_code == 200


def test_expired_records_are_purged(client, auth, conn):
    from crm_service.storage import idempotency

    key_id = auth["Authorization"].split("_")[1]
    conn.execute(
        "INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash, state,"
        " created_at) VALUES (%s, 'old', %s, 'done', now() - interval '30 hours')",
        (key_id, hashlib.sha256(b"x").digest()))
    conn.commit()
    idempotency._last_purge = 0.0
    assert send(client, auth, [order(1)], "new").status_code == 200
    keys = [r[0] for r in conn.execute("SELECT idempotency_key FROM idempotency_records")]
    assert keys == ["new"]
