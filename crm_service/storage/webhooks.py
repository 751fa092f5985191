"""Webhooks (SQL): subscriptions, the delivery queue and its attempts.

Subscriptions come back as :class:`Subscription` records, queue work as :class:`Claimed` and
:class:`DeliveryRow`. The queue functions are the worker's: fan-out and claims are committed by
the caller batch by batch (:mod:`crm_service.triggers.webhooks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True)
class Subscription:
    """A stored subscription, without its secret."""

    id: int
    url: str
    event_types: list[str]
    filters: dict[str, list[str]]
    description: str | None
    status: str
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    paused_until: datetime | None
    created_at: datetime
    event_cursor: int


_COLUMNS = ("id, url, event_types, filters, description, status, disabled_reason, disabled_at,"
            " consecutive_failures, failing_since, paused_until, created_at, event_cursor")


def count_subscriptions(conn: psycopg.Connection) -> int:
    """How many subscriptions exist."""
    row = conn.execute("SELECT count(*) FROM webhooks").fetchone()
    return int(row[0]) if row else 0


def insert_subscription(conn: psycopg.Connection, *, url: str, types: list[str],
                        filters_json: str, description: str | None, secret_enc: bytes,
                        created_by: str | None) -> Subscription:
    """Store a subscription for events from now on (its cursor is the newest event)."""
    with conn.cursor(row_factory=class_row(Subscription)) as cur:
        found = cur.execute(
            "INSERT INTO webhooks (url, event_types, filters, description, secret_enc,"
            " event_cursor, created_by)"
            " VALUES (%s, %s, %s, %s, %s, (SELECT coalesce(max(id), 0) FROM events), %s)"
            f" RETURNING {_COLUMNS}",
            (url, types, filters_json, description, secret_enc, created_by)).fetchone()
    assert found is not None  # INSERT ... RETURNING returns its row
    return found


def all_subscriptions(conn: psycopg.Connection) -> list[Subscription]:
    """Every subscription, by id."""
    with conn.cursor(row_factory=class_row(Subscription)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY id").fetchall()


def subscription(conn: psycopg.Connection, webhook_id: int) -> Subscription | None:
    """One subscription, or None."""
    with conn.cursor(row_factory=class_row(Subscription)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = %s",
                           (webhook_id,)).fetchone()


def delivery_counts(conn: psycopg.Connection, ids: list[int]) -> dict[int, dict[str, int]]:
    """Deliveries per status of each subscription in ``ids``."""
    out: dict[int, dict[str, int]] = {i: {"pending": 0, "delivered": 0, "failed": 0}
                                      for i in ids}
    for wid, status, n in conn.execute(
            "SELECT webhook_id, status, count(*) FROM webhook_deliveries"
            " WHERE webhook_id = ANY(%s) GROUP BY 1, 2", (ids,)):
        out[wid][status] = n
    return out


def delete_subscription(conn: psycopg.Connection, webhook_id: int) -> bool:
    """Delete a subscription with its deliveries; False when there was none."""
    return conn.execute("DELETE FROM webhooks WHERE id = %s", (webhook_id,)).rowcount > 0


def reactivate(conn: psycopg.Connection, webhook_id: int) -> bool:
    """Make a subscription active again and its pending deliveries due now; False if none."""
    n = conn.execute(
        "UPDATE webhooks SET status = 'active', disabled_reason = NULL, disabled_at = NULL,"
        " consecutive_failures = 0, failing_since = NULL, paused_until = NULL WHERE id = %s",
        (webhook_id,)).rowcount
    if n == 0:
        return False
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now(), first_attempt_at = NULL"
                 " WHERE webhook_id = %s AND status = 'pending'", (webhook_id,))
    return True


@dataclass(frozen=True)
class DeliveryRow:
    """One delivery of a subscription, with its attempt log."""

    delivery_id: int
    event_id: int
    event_type: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    attempt_log: list[dict[str, Any]]


def delivery_page(conn: psycopg.Connection, webhook_id: int, status: str | None,
                  before: int | None, limit: int) -> list[DeliveryRow]:
    """Up to ``limit`` deliveries, newest event first (before event ``before``, if given)."""
    with conn.cursor(row_factory=class_row(DeliveryRow)) as cur:
        return cur.execute(
            "SELECT d.id AS delivery_id, d.event_id, e.type AS event_type, d.status,"
            " d.attempts, d.next_attempt_at, d.delivered_at, d.last_status_code, d.last_error,"
            " d.created_at,"
            " coalesce((SELECT json_agg(json_build_object('attempt', a.attempt,"
            "   'started_at', a.started_at, 'duration_ms', round(a.duration_ms::numeric, 1),"
            "   'status_code', a.status_code, 'error', a.error) ORDER BY a.attempt)"
            "   FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log"
            " FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id"
            " WHERE d.webhook_id = %(w)s AND (%(s)s::text IS NULL OR d.status = %(s)s)"
            " AND (%(b)s::bigint IS NULL OR d.event_id < %(b)s)"
            " ORDER BY d.event_id DESC LIMIT %(n)s",
            {"w": webhook_id, "s": status, "b": before, "n": limit}).fetchall()


# --- The queue (worker side) --------------------------------------------------------------

def without_waiting_for_flush(conn: psycopg.Connection) -> None:
    """Let this session's commits return before the WAL is flushed (queue bookkeeping only)."""
    conn.execute("SET synchronous_commit = off")


def active_subscription_ids(conn: psycopg.Connection) -> list[int]:
    """Ids of the active subscriptions, in order."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM webhooks WHERE status = 'active' ORDER BY id").fetchall()]


_FAN_OUT = """
WITH w AS (
    SELECT id, event_types, filters, event_cursor FROM webhooks
    WHERE id = %(w)s AND status = 'active' FOR UPDATE SKIP LOCKED
), scanned AS (
    SELECT e.id, e.type, e.data FROM events e, w
    WHERE e.id > w.event_cursor ORDER BY e.id LIMIT %(batch)s
), queued AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id)
    SELECT w.id, s.id FROM scanned s, w
    WHERE s.type = ANY(w.event_types)
      AND (s.type <> ALL(%(filterable)s::text[])
           OR ((NOT w.filters ? 'tiers' OR w.filters -> 'tiers' ? (s.data ->> 'to_tier'))
               AND (NOT w.filters ? 'value_segments'
                    OR w.filters -> 'value_segments' ? (s.data ->> 'value_segment'))))
    ORDER BY s.id
    ON CONFLICT (webhook_id, event_id) DO NOTHING
    RETURNING 1
)
UPDATE webhooks SET event_cursor = (SELECT max(id) FROM scanned)
WHERE id = (SELECT id FROM w) AND EXISTS (SELECT 1 FROM scanned)
RETURNING (SELECT count(*) FROM queued), (SELECT count(*) FROM scanned)
"""


def fan_out_batch(conn: psycopg.Connection, webhook_id: int, batch: int,
                  filterable: list[str]) -> tuple[int, int] | None:
    """Queue one batch of new events for a subscription: (queued, scanned).

    None when the subscription is busy, inactive or has nothing new.
    """
    row = conn.execute(_FAN_OUT, {"w": webhook_id, "batch": batch,
                                  "filterable": filterable}).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


@dataclass(frozen=True)
class Claimed:
    """A leased delivery: the attempt, the subscription and the event."""

    delivery_id: int
    attempt: int
    webhook_id: int
    url: str
    secret_enc: bytes
    event_id: int
    event_type: str
    customer_id: str | None
    run_id: int | None
    created_at: datetime
    data: dict[str, Any]


_CLAIM = """
WITH pick AS (
    SELECT d.id FROM webhooks w
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
        WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
    ) d
    WHERE w.status = 'active' AND (w.paused_until IS NULL OR w.paused_until <= now())
    ORDER BY d.next_attempt_at LIMIT 1
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, first_attempt_at = coalesce(d.first_attempt_at, now()),
    next_attempt_at = now() + make_interval(secs => %(lease)s)
FROM pick, webhooks w, events e
WHERE d.id = pick.id AND w.id = d.webhook_id AND e.id = d.event_id
RETURNING d.id AS delivery_id, d.attempts AS attempt, w.id AS webhook_id, w.url, w.secret_enc,
          e.id AS event_id, e.type AS event_type, e.customer_id, e.run_id, e.created_at, e.data
"""


def claim_due(conn: psycopg.Connection, lease_seconds: float) -> Claimed | None:
    """Lease the oldest due delivery of an active, unpaused subscription."""
    with conn.cursor(row_factory=class_row(Claimed)) as cur:
        return cur.execute(_CLAIM, {"lease": lease_seconds}).fetchone()


_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
VALUES (%(d)s, %(n)s, to_timestamp(%(t)s), %(ms)s, %(code)s, %(err)s)
"""
_DELIVERED = f"""
WITH attempt AS ({_ATTEMPT}),
delivery AS (
    UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),
        last_status_code = %(code)s, last_error = NULL
    WHERE id = %(d)s AND status = 'pending'
)
UPDATE webhooks SET consecutive_failures = 0, failing_since = NULL, paused_until = NULL
WHERE id = %(w)s AND consecutive_failures > 0
"""


def record_delivered(conn: psycopg.Connection, attempt: dict[str, Any]) -> None:
    """A successful attempt: the delivery done, the subscription's failure streak cleared."""
    conn.execute(_DELIVERED, attempt)


def record_attempt(conn: psycopg.Connection, attempt: dict[str, Any]) -> None:
    """Log one attempt."""
    conn.execute(_ATTEMPT, attempt)


def count_failure(conn: psycopg.Connection,
                  webhook_id: int) -> tuple[int, float, str] | None:
    """Add a failure to the subscription's streak: (failures, seconds failing, status)."""
    row = conn.execute(
        "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1,"
        " failing_since = coalesce(failing_since, now()) WHERE id = %s"
        " RETURNING consecutive_failures, extract(epoch FROM now() - failing_since), status",
        (webhook_id,)).fetchone()
    return None if row is None else (int(row[0]), float(row[1]), str(row[2]))


def hold_delivery(conn: psycopg.Connection, delivery_id: str, status_code: int | None,
                  error: str) -> None:
    """Keep a pending delivery due now (its subscription is being disabled)."""
    conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now(), last_status_code = %s,"
        " last_error = %s WHERE id = %s AND status = 'pending'",
        (status_code, error, delivery_id))


def disable_subscription(conn: psycopg.Connection, webhook_id: int, reason: str) -> None:
    """Disable a subscription, saying why."""
    conn.execute(
        "UPDATE webhooks SET status = 'disabled', disabled_reason = %s,"
        " disabled_at = now(), paused_until = NULL WHERE id = %s", (reason, webhook_id))


def delivery_age(conn: psycopg.Connection, delivery_id: str) -> float | None:
    """Seconds since the delivery's first attempt (None before one)."""
    row = conn.execute("SELECT extract(epoch FROM now() - first_attempt_at)"
                       " FROM webhook_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def give_up_delivery(conn: psycopg.Connection, delivery_id: str, status_code: int | None,
                     error: str) -> None:
    """Mark a pending delivery failed for good."""
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_status_code = %s,"
        " last_error = %s WHERE id = %s AND status = 'pending'",
        (status_code, error, delivery_id))


def back_off(conn: psycopg.Connection, webhook_id: int, delivery_id: str, *,
             pause_seconds: float, retry_seconds: float, status_code: int | None,
             error: str) -> None:
    """Pause the subscription and retry the delivery later."""
    conn.execute("UPDATE webhooks SET paused_until = now() + make_interval(secs => %s)"
                 " WHERE id = %s", (pause_seconds, webhook_id))
    conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => %s),"
        " last_status_code = %s, last_error = %s WHERE id = %s AND status = 'pending'",
        (retry_seconds, status_code, error, delivery_id))
