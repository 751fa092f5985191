"""Retention of the operational tables (SQL): events, deliveries, sessions, idempotency, slots.

Applied by the worker every ``CRM_MAINTENANCE_INTERVAL_MINUTES`` and by
``crm-service maintenance``; each table's window is a setting:

- **events** older than ``CRM_EVENT_RETENTION_DAYS`` (90), but never one a webhook subscription
  has not received yet: an event past any subscription's ``event_cursor`` (a disabled one's too:
  re-enabling it delivers what it missed) stays, and so does one with a delivery left (pending,
  or still in the delivery log). Consumers of ``GET /v1/events`` must read within the window.
- **webhook deliveries** that ended (delivered, or given up) more than
  ``CRM_DELIVERY_RETENTION_DAYS`` (30) ago, with their attempts; attempts of a delivery still
  pending past that window too.
- **console sessions** expired or idle past ``CRM_CONSOLE_IDLE_MINUTES``.
- **idempotency records** past ``CRM_IDEMPOTENCY_TTL_HOURS``.
- **schedule slots** older than ``CRM_SCHEDULE_SLOT_RETENTION_DAYS`` (90), the newest always
  kept (it is what stops the schedule queuing its slot again).

Deletes go in batches of :data:`BATCH` rows, each its own transaction, so a first pass over a
year of backlog holds no lock for long and never bloats one transaction's WAL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from crm_service.platform.config import Settings

BATCH = 10_000

_EVENTS = """
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.created_at < now() - make_interval(days => %(days)s)
      AND e.id <= coalesce((SELECT min(event_cursor) FROM webhooks), 9223372036854775807)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
    ORDER BY e.id LIMIT %(batch)s)
"""
_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    -- created_at first: implied by the line below, and what the BRIN index can find.
    WHERE status <> 'pending' AND created_at < now() - make_interval(days => %(days)s)
      AND coalesce(delivered_at, next_attempt_at, created_at)
          < now() - make_interval(days => %(days)s)
    LIMIT %(batch)s)
"""
_ATTEMPTS = """
DELETE FROM webhook_attempts WHERE id IN (
    SELECT id FROM webhook_attempts
    WHERE started_at < now() - make_interval(days => %(days)s) LIMIT %(batch)s)
"""
_SESSIONS = """
DELETE FROM console_sessions WHERE token_hash IN (
    SELECT token_hash FROM console_sessions
    WHERE expires_at < now() OR last_seen_at < now() - make_interval(mins => %(mins)s)
    LIMIT %(batch)s)
"""
_IDEMPOTENCY = """
DELETE FROM idempotency_records WHERE (api_key_id, idempotency_key) IN (
    SELECT api_key_id, idempotency_key FROM idempotency_records
    WHERE created_at < now() - make_interval(hours => %(hours)s) LIMIT %(batch)s)
"""
_SLOTS = """
DELETE FROM schedule_slots WHERE slot IN (
    SELECT slot FROM schedule_slots
    WHERE created_at < now() - make_interval(days => %(days)s)
      AND slot < (SELECT max(slot) FROM schedule_slots)
    LIMIT %(batch)s)
"""
_HELD = """
SELECT w.id, w.status, count(e.id), min(e.created_at)
FROM webhooks w JOIN events e ON e.id > w.event_cursor
WHERE e.created_at < now() - make_interval(days => %(days)s)
GROUP BY w.id, w.status ORDER BY w.id
"""


# One pass at a time across workers (concurrent batched deletes of the same rows would only
# wait on each other, or deadlock).
_LOCK = 0x6372_6D68  # "crmh"


@dataclass
class HousekeepingReport:
    """Rows deleted per table, and the subscriptions holding events past their window.

    ``busy``: another pass (another worker) was running; this one did nothing.
    """

    deleted: dict[str, int] = field(default_factory=dict)
    held_by_webhooks: list[dict[str, object]] = field(default_factory=list)
    busy: bool = False


def _drain(conn: psycopg.Connection, query: str, params: dict[str, object]) -> int:
    total = 0
    while True:
        with conn.transaction():
            n = conn.execute(query, {**params, "batch": BATCH}).rowcount
        total += n
        if n < BATCH:
            return total


def apply(conn: psycopg.Connection, settings: Settings) -> HousekeepingReport:
    """Apply every operational table's retention window; return what went.

    Deliveries go before events, so an event whose last ended delivery ages out in this pass
    can go in the same pass.
    """
    report = HousekeepingReport()
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK,)).fetchone()
    conn.commit()
    if not (row and row[0]):
        report.busy = True
        return report
    try:
        _apply(conn, settings, report)
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
        conn.commit()
    return report


def _apply(conn: psycopg.Connection, settings: Settings, report: HousekeepingReport) -> None:
    d = report.deleted
    d["webhook_attempts"] = _drain(conn, _ATTEMPTS, {"days": settings.delivery_retention_days})
    d["webhook_deliveries"] = _drain(conn, _DELIVERIES,
                                     {"days": settings.delivery_retention_days})
    d["events"] = _drain(conn, _EVENTS, {"days": settings.event_retention_days})
    d["console_sessions"] = _drain(conn, _SESSIONS, {"mins": settings.console_idle_minutes})
    d["idempotency_records"] = _drain(conn, _IDEMPOTENCY,
                                      {"hours": settings.idempotency_ttl_hours})
    d["schedule_slots"] = _drain(conn, _SLOTS, {"days": settings.schedule_slot_retention_days})
    with conn.transaction():
        rows = conn.execute(_HELD, {"days": settings.event_retention_days}).fetchall()
    report.held_by_webhooks = [{"webhook_id": str(w), "status": s, "events": int(n),
                                "oldest": oldest.isoformat()} for w, s, n, oldest in rows]
