"""Erasure and export (GDPR Art. 17/20): a canary customer leaves no trace in any column."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from crm_service.ingestion.bulk import import_orders
from crm_service.ingestion.records import SUPPRESSED
from crm_service.privacy import erasure
from crm_service.scoring import run_scoring
from crm_service.storage import publishing
from crm_service.triggers import webhooks
from crm_service.vocabulary import EVENT_TYPES
from tests.conftest import q, write

CANARY = "canary-7f3a9e"
EMAIL = "canary.person@example.org"
PHONE = "+8613912345678"
NAME = "Canary Zhou"
EXTERNAL = "tb_canary_55"
NEEDLES = (CANARY, EMAIL, PHONE, "13912345678", NAME, EXTERNAL)


@pytest.fixture()
def admin(make_token):
    return {"Authorization": f"Bearer {make_token('admin')}"}


def plant(client, admin) -> None:
    """The canary, through the API: profile, identity, orders sent with Idempotency-Keys."""
    r = client.post("/v1/customers", headers={**admin, "Idempotency-Key": "canary-profile"},
                    json={"customers": [{"customer_id": CANARY, "email": EMAIL, "phone": PHONE,
                                         "name": NAME, "identities": [
                                             {"channel": "tmall", "external_id": EXTERNAL}]}]})
    assert r.status_code == 200, r.get_json()
    orders = [{"order_id": f"CAN-{i}", "customer_id": CANARY, "channel": "tmall",
               "ordered_at": f"1997-{m:02d}-15T10:00:00+00:00", "amount": "88.50",
               "currency": "USD"} for i, m in enumerate((1, 3, 5, 8, 11))]
    r = client.post("/v1/orders", headers={**admin, "Idempotency-Key": "canary-orders"},
                    json={"orders": orders})
    assert r.status_code == 200 and all(x["outcome"] == "inserted"
                                        for x in r.get_json()["results"])


def hits(conn) -> list[tuple[str, str, str]]:
    """(table, column, needle) for every text, JSON or bytea column holding a needle."""
    cols = q(conn, "SELECT table_name, column_name, data_type FROM information_schema.columns"
                   " WHERE table_schema = 'public' AND data_type IN ('text', 'character varying',"
                   " 'character', 'json', 'jsonb', 'bytea', 'ARRAY')")
    assert len(cols) > 40
    found = []
    for table, column, kind in cols:
        for needle in NEEDLES:
            if kind == "bytea":
                sql = (f'SELECT count(*) FROM "{table}"'
                       f' WHERE position(convert_to(%s, \'UTF8\') IN "{column}") > 0')
            else:
                sql = f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s'
                needle_arg = f"%{needle}%"
            n = q(conn, sql, needle if kind == "bytea" else needle_arg)[0][0]
            if n:
                found.append((table, column, needle))
    return found


def test_erasure_leaves_no_trace_and_suppresses_later_ingestion(
        client, cdnow_loaded, settings, admin, tmp_path):
    conn = cdnow_loaded
    plant(client, admin)
    run_scoring(conn, settings, as_of=date(1997, 9, 30))
    hook = webhooks.create(conn, settings, url="http://127.0.0.1:9/h",
                           types=list(EVENT_TYPES), filters={"tiers": ["dormant"]})
    conn.commit()
    run_scoring(conn, settings, as_of=date(1998, 6, 30))
    webhooks.fan_out(conn)
    # The canary is everywhere before: profile, orders, scores of both runs, history, events.
    assert {t for t, _, _ in hits(conn)} >= {"customers", "customer_identities", "orders",
                                              "customer_scores", "tier_transitions", "events",
                                              "idempotency_records"}
    exported = client.get(f"/v1/customers/{CANARY}/export", headers=admin).get_json()
    assert exported["profile"]["email"] == EMAIL and len(exported["orders"]) == 5
    assert len(exported["scores"]) == 2 and exported["tier_history"]
    assert exported["identities"][0]["external_id"] == EXTERNAL
    ref = exported["customer_ref"]
    assert all(e["data"]["customer_ref"] == ref for e in exported["events"])

    r = client.delete(f"/v1/customers/{CANARY}", headers=admin)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["customer_ref"] == ref and body["removed"]["orders"] == 5
    assert body["removed"]["scores"] == 2
    # The profile batch's and the order batch's responses (each result names its customer).
    assert body["removed"]["idempotency_records"] == 2

    assert hits(conn) == []  # the canary scan: no id, email, phone, name or identity left
    assert client.get(f"/v1/customers/{CANARY}", headers=admin).status_code == 404
    assert client.get(f"/v1/customers/{CANARY}/export", headers=admin).status_code == 404
    assert client.delete(f"/v1/customers/{CANARY}", headers=admin).status_code == 404
    # customer.erased carries only the reference, and reaches every subscription to it.
    event = q(conn, "SELECT customer_id, data FROM events WHERE type = 'customer.erased'")
    assert event == [(None, {"customer_ref": ref, "erased_at": event[0][1]["erased_at"]})]
    webhooks.fan_out(conn)
    assert q(conn, "SELECT count(*) FROM webhook_deliveries d JOIN events e"
                   " ON e.id = d.event_id WHERE e.type = 'customer.erased' AND d.webhook_id = %s",
             int(hook["id"]))[0][0] == 1

    # Later ingestion for the id is suppressed: REST orders and profiles, CSV imports.
    r = client.post("/v1/orders", headers=admin, json={"orders": [
        {"order_id": "CAN-9", "customer_id": CANARY, "channel": "jd",
         "ordered_at": "1998-07-01T10:00:00+00:00", "amount": "10", "currency": "USD"},
        {"order_id": "OK-1", "customer_id": "someone-else", "channel": "jd",
         "ordered_at": "1998-07-01T10:00:00+00:00", "amount": "10", "currency": "USD"}]})
    results = r.get_json()["results"]
    assert results[0]["outcome"] == "rejected" and results[0]["errors"]["customer_id"] \
        == SUPPRESSED
    assert results[1]["outcome"] == "inserted"
    r = client.post("/v1/customers", headers=admin,
                    json={"customers": [{"customer_id": CANARY, "email": EMAIL}]})
    assert r.get_json()["results"][0]["outcome"] == "rejected"
    csv = write(tmp_path / "o.csv", "order_id,customer_id,channel,ordered_at,amount\n"
                f"CAN-10,{CANARY},pdd,1998-07-02T10:00:00+00:00,5\n"
                "OK-2,another,pdd,1998-07-02T10:00:00+00:00,5\n")
    summary = import_orders(conn, settings, csv, report_path=tmp_path / "rej.csv")
    conn.commit()
    assert summary.inserted == 1 and summary.rejected == 1
    assert SUPPRESSED in (tmp_path / "rej.csv").read_text()
    customers_csv = write(tmp_path / "c.csv", f"customer_id,email\n{CANARY},{EMAIL}\n")
    from crm_service.ingestion.bulk import import_customers
    summary = import_customers(conn, settings, customers_csv, report_path=tmp_path / "r2.csv")
    conn.commit()
    assert summary.rejected == 1 and summary.inserted == 0
    (tmp_path / "rej.csv").unlink()
    (tmp_path / "r2.csv").unlink()
    assert [h for h in hits(conn) if h[2] != CANARY or h[0] != "idempotency_records"] == []
    # The suppression list holds keyed hashes, not the id: the id's and its Tmall account's.
    assert q(conn, "SELECT count(*) FROM erased_customers")[0][0] == 2


def test_a_run_publishing_after_an_erasure_leaves_the_customer_out(
        client, cdnow_loaded, settings, admin, dsn, monkeypatch):
    plant(client, admin)
    publish = publishing.publish

    def erase_first(conn, *args, **kwargs):
        with psycopg.connect(dsn) as other:
            erasure.erase(other, settings, CANARY)
        return publish(conn, *args, **kwargs)

    monkeypatch.setattr(publishing, "publish", erase_first)
    run = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    assert q(cdnow_loaded, "SELECT count(*) FROM customer_scores WHERE run_id = %s"
             " AND customer_id = %s", run.run_id, CANARY)[0][0] == 0
    assert q(cdnow_loaded, "SELECT count(*) FROM customer_scores WHERE run_id = %s",
             run.run_id)[0][0] > 2000
    assert [h for h in hits(cdnow_loaded) if h[0] != "idempotency_records"] == []


def test_erasure_and_export_scopes_and_bad_ids(client, make_token, cdnow_loaded):
    writer = {"Authorization": f"Bearer {make_token('customers:write', 'scores:read')}"}
    assert client.delete("/v1/customers/1", headers=writer).status_code == 403
    assert client.delete("/v1/customers/1").status_code == 401
    assert client.get("/v1/customers/1/export", headers=writer).status_code == 403
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert client.delete("/v1/customers/no-such-one", headers=admin).status_code == 404
    assert client.delete("/v1/customers/" + "x" * 200, headers=admin).status_code == 422
    some = q(cdnow_loaded, "SELECT customer_id FROM orders LIMIT 1")[0][0]
    r = client.get(f"/v1/customers/{some}/export", headers=admin)
    assert r.status_code == 200 and r.get_json()["orders"] and r.get_json()["profile"]
