"""Webhook subscriptions and the delivery queue (the SSRF guard is ``ssrf``, signing ``signing``).

How an event reaches a receiver:

1. A run is published and its events are written to the outbox (:mod:`crm_service.triggers.events`).
2. :func:`fan_out` (worker) reads the outbox after each active subscription's ``event_cursor``
   and inserts one ``webhook_deliveries`` row per matching event. The row's id is the delivery
   id sent to the receiver, the same on every retry, so receivers can drop duplicates.
3. :func:`claim` takes the oldest due delivery with ``FOR UPDATE SKIP LOCKED`` and leases it
   (``next_attempt_at`` moves past the delivery timeout), so a worker killed mid-delivery leaves
   it due again once the lease ends: delivery is at least once.
4. :func:`record` stores the attempt. A failure pauses the whole subscription with exponential
   backoff (the endpoint is down, not the event), so a dead receiver costs one probe per backoff
   step rather than one timeout per queued event. When a subscription has failed for the retry
   window (24 h by default) without a success, or its receiver answered 410 Gone, it is
   disabled with the reason; its queue is kept, and enabling it delivers the queue. A single
   event that keeps failing for the window while others get through is marked ``failed``.

The SQL is in :mod:`crm_service.storage.webhooks`. :func:`fan_out`, :func:`claim` and
:func:`record` are the worker's: they commit as they go (one batch, one claim, one outcome).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_service.errors import NotFoundError, ValidationError
from crm_service.platform import secretbox
from crm_service.platform.config import Settings
from crm_service.storage import webhooks as store
from crm_service.triggers.signing import new_secret
from crm_service.triggers.ssrf import check_url
from crm_service.vocabulary import EVENT_TYPES, RUN_EVENT_TYPES, TIERS, VALUE_SEGMENTS

if TYPE_CHECKING:
    import psycopg

# Events whose delivery a subscription's filters (tiers, value segments) can narrow.
# (Erasure, merge and unmerge events carry no tier or segment: filters never hold them back.)
FILTERABLE = frozenset(RUN_EVENT_TYPES)
MAX_SUBSCRIPTIONS = 100


# --- Subscriptions ------------------------------------------------------------------------

def _validate_types(types: list[str]) -> list[str]:
    if not types:
        raise ValidationError("events: at least one event type")
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValidationError(f"events: unknown {', '.join(unknown)}; known: "
                              f"{', '.join(EVENT_TYPES)}")
    return sorted(set(types), key=EVENT_TYPES.index)


def _validate_filters(filters: dict[str, Any] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, allowed in (("tiers", TIERS), ("value_segments", VALUE_SEGMENTS)):
        values = (filters or {}).get(name)
        if values is None:
            continue
        bad = sorted(set(values) - set(allowed))
        if not values or bad:
            raise ValidationError(f"filters.{name}: one or more of {', '.join(allowed)}"
                                  + (f" (not {', '.join(bad)})" if bad else ""))
        out[name] = sorted(set(values), key=allowed.index)
    return out


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _public(s: store.Subscription) -> dict[str, Any]:
    return {"id": str(s.id), "url": s.url, "events": list(s.event_types), "filters": s.filters,
            "description": s.description, "status": s.status,
            "disabled_reason": s.disabled_reason, "disabled_at": _iso(s.disabled_at),
            "consecutive_failures": s.consecutive_failures,
            "failing_since": _iso(s.failing_since), "paused_until": _iso(s.paused_until),
            "created_at": s.created_at.isoformat(), "after_event": str(s.event_cursor)}


def create(conn: psycopg.Connection, settings: Settings, *, url: str, types: list[str],
           filters: dict[str, Any] | None = None, description: str | None = None,
           created_by: str | None = None) -> dict[str, Any]:
    """A new active subscription for events from now on; the answer holds the ``secret``."""
    check_url(url, settings.webhook_allow_hosts)
    types = _validate_types(types)
    filters = _validate_filters(filters)
    if store.count_subscriptions(conn) >= MAX_SUBSCRIPTIONS:
        raise ValidationError(f"at most {MAX_SUBSCRIPTIONS} subscriptions; delete unused ones")
    secret = new_secret()
    key = secretbox.server_key(settings)
    created = store.insert_subscription(
        conn, url=url, types=types, filters_json=json.dumps(filters), description=description,
        secret_enc=secretbox.encrypt(key, secret, "webhook-secret"), created_by=created_by)
    return {**_public(created), "secret": secret}


def list_all(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every subscription with its delivery counts (never the secret)."""
    found = store.all_subscriptions(conn)
    counts = store.delivery_counts(conn, [s.id for s in found])
    return [{**_public(s), "deliveries": counts[s.id]} for s in found]


def _id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFoundError(f"no webhook {text!r}")
    return int(text)


def get(conn: psycopg.Connection, webhook_id: str) -> dict[str, Any]:
    """One subscription with its delivery counts; NotFoundError if there is none."""
    found = store.subscription(conn, _id(webhook_id))
    if found is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    return {**_public(found), "deliveries": store.delivery_counts(conn, [found.id])[found.id]}


def delete(conn: psycopg.Connection, webhook_id: str) -> None:
    """Remove a subscription with its queued deliveries and their history."""
    if not store.delete_subscription(conn, _id(webhook_id)):
        raise NotFoundError(f"no webhook {webhook_id!r}")


def enable(conn: psycopg.Connection, webhook_id: str) -> dict[str, Any]:
    """Re-activate a disabled subscription; its queued deliveries are retried at once.

    Events published while it was disabled are delivered too (its cursor did not move).
    """
    if not store.reactivate(conn, _id(webhook_id)):
        raise NotFoundError(f"no webhook {webhook_id!r}")
    return get(conn, webhook_id)


def deliveries(conn: psycopg.Connection, webhook_id: str, *, status: str | None = None,
               before: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Deliveries of a subscription, newest event first, each with its attempts."""
    wid = _id(webhook_id)
    get(conn, webhook_id)
    if status is not None and status not in ("pending", "delivered", "failed"):
        raise ValidationError("status: pending, delivered or failed")
    if before is not None and (not (before.isascii() and before.isdigit()) or len(before) > 19):
        raise ValidationError("before: a cursor from next_cursor")
    rows = store.delivery_page(conn, wid, status, None if before is None else int(before),
                               limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"delivery_id": str(d.delivery_id), "event_id": str(d.event_id),
              "event_type": d.event_type, "status": d.status, "attempts": d.attempts,
              "next_attempt_at": d.next_attempt_at.isoformat() if d.status == "pending"
              else None,
              "delivered_at": _iso(d.delivered_at), "last_status_code": d.last_status_code,
              "last_error": d.last_error, "created_at": d.created_at.isoformat(),
              "attempt_log": d.attempt_log} for d in rows]
    return {"deliveries": items, "next_cursor": str(rows[-1].event_id) if more else None}


# --- The queue (worker side) --------------------------------------------------------------

def fan_out(conn: psycopg.Connection, *, batch: int = 5000) -> int:
    """Queue deliveries for events new to each active subscription; return how many queued.

    Event ids become visible in increasing order (their writers hold the ``scoring_state``
    lock), so a cursor never passes an event that commits later. Each batch is a transaction.
    """
    queued = 0
    ids = store.active_subscription_ids(conn)
    conn.commit()
    filterable = sorted(FILTERABLE)
    for wid in ids:
        while True:
            done = store.fan_out_batch(conn, wid, batch, filterable)
            conn.commit()
            if done is None:
                break
            queued += done[0]
            if done[1] < batch:
                break
    return queued


@dataclass
class Job:
    """A claimed delivery: what to send and where."""

    delivery_id: str
    attempt: int
    webhook_id: int
    url: str
    secret: str
    event: dict[str, Any]


# Decrypted secrets by ciphertext (a worker process posts many events per subscription).
_SECRETS: dict[bytes, str] = {}


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery stays invisible: well past one attempt's timeout."""
    return 2 * settings.webhook_timeout_seconds + 5


def claim(conn: psycopg.Connection, settings: Settings, key: bytes) -> Job | None:
    """Lease the oldest due delivery of an active, unpaused subscription (committed)."""
    found = store.claim_due(conn, lease_seconds(settings))
    conn.commit()
    if found is None:
        return None
    event = {"id": str(found.event_id), "type": found.event_type,
             "customer_id": found.customer_id, "run_id": found.run_id,
             "occurred_at": found.created_at.isoformat(), "data": found.data}
    blob = bytes(found.secret_enc)
    secret = _SECRETS.get(blob)
    if secret is None:
        if len(_SECRETS) > 4 * MAX_SUBSCRIPTIONS:
            _SECRETS.clear()
        secret = _SECRETS[blob] = secretbox.decrypt(key, blob, "webhook-secret")
    return Job(str(found.delivery_id), found.attempt, found.webhook_id, found.url, secret, event)


def backoff(settings: Settings, failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failures (±20 % jitter)."""
    base = settings.webhook_retry_base_seconds * 2 ** min(failures - 1, 30)
    return min(base, settings.webhook_retry_max_seconds) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter)


def record(conn: psycopg.Connection, settings: Settings, job: Job, *, started: float,
           duration_ms: float, status_code: int | None, error: str | None) -> str:
    """Store an attempt's outcome; return the delivery's new status.

    Success clears the subscription's failure streak. Failure pauses the subscription for the
    backoff; after ``CRM_WEBHOOK_RETRY_WINDOW_SECONDS`` of failing without a success (or on
    410 Gone) the subscription is disabled with the reason, its queue kept.
    """
    ok = status_code is not None and 200 <= status_code < 300
    attempt = {"d": job.delivery_id, "n": job.attempt, "t": started, "ms": duration_ms,
               "code": status_code, "err": error, "w": job.webhook_id}
    if ok:  # the common case: one statement, one round trip
        store.record_delivered(conn, attempt)
        conn.commit()
        return "delivered"
    with conn.transaction():
        store.record_attempt(conn, attempt)
        what = f"HTTP {status_code}" if status_code is not None else (error or "failed")
        streak = store.count_failure(conn, job.webhook_id)
        if streak is None:  # the subscription was deleted meanwhile
            return "failed"
        failures, failing_for, state = streak
        gone = status_code == 410
        if gone or failing_for >= settings.webhook_retry_window_seconds:
            # The endpoint is gone or has been down for the whole window: stop, keep the queue
            # (enable delivers it).
            reason = ("the receiver answered 410 Gone" if gone else
                      f"deliveries failed for {failing_for / 3600:.2f} h "
                      f"({failures} attempts in a row); last: {what}")
            store.hold_delivery(conn, job.delivery_id, status_code, error or what)
            if state == "active":
                store.disable_subscription(conn, job.webhook_id, reason)
            return "pending"
        age = store.delivery_age(conn, job.delivery_id)
        if age is not None and age >= settings.webhook_retry_window_seconds:
            # This one event has failed for the window while others got through: give it up.
            store.give_up_delivery(conn, job.delivery_id, status_code, error or what)
            return "failed"
        store.back_off(conn, job.webhook_id, job.delivery_id,
                       pause_seconds=backoff(settings, failures),
                       retry_seconds=backoff(settings, max(failures, job.attempt)),
                       status_code=status_code, error=error or what)
        return "pending"
