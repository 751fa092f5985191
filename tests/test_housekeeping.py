"""Bounded operational tables: retention of events, deliveries, sessions, idempotency records and
schedule slots, applied by the worker and by `crm-service maintenance` (issue 17)."""

from __future__ import annotations

import dataclasses
import json

import psycopg
from click.testing import CliRunner

from crm_service.cli import main
from crm_service.storage import housekeeping
from crm_service.triggers import webhooks
from tests.conftest import count, q, run_worker_until


def _event(conn, days_old: int, customer: str = "C1") -> int:
    row = conn.execute(
        "INSERT INTO events (type, customer_id, data, created_at) VALUES ('tier.changed', %s,"
        " '{}', now() - make_interval(days => %s)) RETURNING id", (customer, days_old)).fetchone()
    return int(row[0])


def _delivery(conn, webhook_id: str, event_id: int, status: str, days_old: int) -> str:
    row = conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, status, created_at,"
        " next_attempt_at, delivered_at) VALUES (%s, %s, %s, now() - make_interval(days => %s),"
        " now() - make_interval(days => %s),"
        " CASE WHEN %s = 'delivered' THEN now() - make_interval(days => %s) END) RETURNING id",
        (int(webhook_id), event_id, status, days_old, days_old, status, days_old)).fetchone()
    conn.execute("INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms)"
                 " VALUES (%s, 1, now() - make_interval(days => %s), 12)", (row[0], days_old))
    return str(row[0])


def _base(conn, settings):
    """Events and deliveries of every kind, old and new, with one subscription."""
    hook = webhooks.create(conn, settings, url="http://127.0.0.1:9/hook", types=["tier.changed"])
    delivered = _event(conn, 120)
    pending = _event(conn, 120)
    log_only = _event(conn, 100)    # its given-up delivery is still in the delivery log
    unsent = _event(conn, 100)      # never fanned out to the subscription yet
    recent = _event(conn, 5)
    conn.execute("UPDATE webhooks SET event_cursor = %s WHERE id = %s",
                 (log_only, int(hook["id"])))
    _delivery(conn, hook["id"], delivered, "delivered", 110)
    _delivery(conn, hook["id"], pending, "pending", 110)
    _delivery(conn, hook["id"], log_only, "failed", 10)
    conn.commit()
    return hook, {"delivered": delivered, "pending": pending, "log_only": log_only,
                  "unsent": unsent, "recent": recent}


def _sessions_slots_and_keys(conn, make_token):
    make_token("customers:read")
    key_id = q(conn, "SELECT id FROM api_keys LIMIT 1")[0][0]
    for name, expires, seen in (("live", "1 hour", "0"), ("expired", "-1 hour", "0"),
                                ("idle", "1 hour", "120")):
        conn.execute("INSERT INTO console_sessions (token_hash, key_id, csrf_token, expires_at,"
                     " last_seen_at) VALUES (%s, %s, 'x', now() + %s::interval,"
                     " now() - make_interval(mins => %s))",
                     (name.encode(), key_id, expires, int(seen)))
    for key, hours in (("fresh", 1), ("stale", 48)):
        conn.execute("INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash,"
                     " state, created_at) VALUES (%s, %s, 'h', 'done',"
                     " now() - make_interval(hours => %s))", (key_id, key, hours))
    for days in (400, 200, 100):  # the newest is old too: it is kept regardless
        conn.execute("INSERT INTO schedule_slots (slot, note, created_at) VALUES"
                     " (now() - make_interval(days => %s), 'x', now() - make_interval(days => %s))",
                     (days, days))
    conn.commit()


def test_each_table_keeps_its_window_and_no_event_a_subscription_still_needs(conn, settings,
                                                                              make_token):
    hook, ev = _base(conn, settings)
    _sessions_slots_and_keys(conn, make_token)
    report = housekeeping.apply(conn, settings)

    left = {r[0] for r in q(conn, "SELECT id FROM events")}
    assert left == {ev["pending"], ev["log_only"], ev["unsent"], ev["recent"]}
    assert report.deleted["events"] == 1
    statuses = sorted(r[0] for r in q(conn, "SELECT status FROM webhook_deliveries"))
    assert statuses == ["failed", "pending"] and report.deleted["webhook_deliveries"] == 1
    # The pending delivery's 110-day-old attempt is past the window; the recent one stays.
    assert count(conn, "SELECT count(*) FROM webhook_attempts") == 1
    assert {r[0] for r in q(conn, "SELECT token_hash FROM console_sessions")} == {b"live"}
    assert [r[0] for r in q(conn, "SELECT idempotency_key FROM idempotency_records")] == ["fresh"]
    assert count(conn, "SELECT count(*) FROM schedule_slots") == 1
    assert report.held_by_webhooks == [{"webhook_id": hook["id"], "status": "active",
                                        "events": 1, "oldest": report.held_by_webhooks[0]
                                        ["oldest"]}]
    # A second pass has nothing left to do.
    again = housekeeping.apply(conn, settings)
    assert not any(again.deleted.values())

    # Once the subscription has received everything and its log aged out, the events go.
    conn.execute("UPDATE webhooks SET event_cursor = (SELECT max(id) FROM events)")
    conn.execute("UPDATE webhook_deliveries SET status = 'delivered',"
                 " delivered_at = now() - interval '40 days', created_at = now() - interval"
                 " '40 days'")
    conn.commit()
    housekeeping.apply(conn, settings)
    assert {r[0] for r in q(conn, "SELECT id FROM events")} == {ev["recent"]}


def test_windows_are_settings(conn, settings):
    _base(conn, settings)
    housekeeping.apply(conn, dataclasses.replace(settings, event_retention_days=3650,
                                                 delivery_retention_days=3650))
    assert count(conn, "SELECT count(*) FROM events") == 5
    assert count(conn, "SELECT count(*) FROM webhook_deliveries") == 3


def test_deletes_go_in_batches(conn, settings, monkeypatch):
    monkeypatch.setattr(housekeeping, "BATCH", 7)
    conn.execute("INSERT INTO events (type, customer_id, data, created_at) SELECT"
                 " 'tier.changed', 'C' || g, '{}', now() - interval '200 days'"
                 " FROM generate_series(1, 50) g")
    conn.commit()
    assert housekeeping.apply(conn, settings).deleted["events"] == 50
    assert count(conn, "SELECT count(*) FROM events") == 0


def test_maintenance_applies_them_on_demand(conn, settings, cli_env):
    _base(conn, settings)
    r = CliRunner().invoke(main, ["maintenance", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["housekeeping"]["deleted"]["events"] == 1
    assert out["housekeeping"]["held_by_webhooks"][0]["events"] == 1
    assert "retention" in out
    text = CliRunner().invoke(main, ["maintenance"], catch_exceptions=False)
    assert text.exit_code == 0 and "deleted: 0 webhook attempts" in text.stdout
    assert "holds 1 events older than 90 days" in text.stdout


def test_the_worker_applies_them(conn, settings, dsn):
    _base(conn, settings)
    run_worker_until(dsn, settings, lambda: count(conn, "SELECT count(*) FROM events") == 4,
                     seconds=10)
    assert count(conn, "SELECT count(*) FROM events") == 4


def test_one_pass_at_a_time(conn, settings, dsn):
    _base(conn, settings)
    with psycopg.connect(dsn) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (housekeeping._LOCK,))
        report = housekeeping.apply(conn, settings)
        assert report.busy and report.deleted == {}
        assert count(conn, "SELECT count(*) FROM events") == 5
    assert not housekeeping.apply(conn, settings).busy


def test_a_failing_pass_never_keeps_the_worker_from_its_runs(cdnow_loaded, settings, dsn,
                                                             monkeypatch):
    from datetime import date

    from crm_service.storage import runs

    def failing(*_args, **_kwargs):
        raise RuntimeError("statement timeout, say")

    monkeypatch.setattr(housekeeping, "apply", failing)
    run_id = runs.create_run(cdnow_loaded, date(1997, 9, 30), "UTC", status="queued")

    def status():
        return q(cdnow_loaded, "SELECT status FROM scoring_runs WHERE id = %s", run_id)[0][0]

    run_worker_until(dsn, settings, lambda: status() in ("succeeded", "failed"))
    assert status() == "succeeded"
