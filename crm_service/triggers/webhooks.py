"""Webhook subscriptions: creation with SSRF checks, signing, and the delivery queue.

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

Signing follows the Standard Webhooks scheme (README, "Webhooks"): ``webhook-signature:
v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{raw body}")>``, where the key is
the base64-decoded part of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crm_service.errors import NotFoundError, ValidationError
from crm_service.platform import secretbox
from crm_service.platform.config import Settings
from crm_service.vocabulary import EVENT_TYPES, TIERS, VALUE_SEGMENTS

if TYPE_CHECKING:
    import psycopg

# Lifecycle events carry a tier and a value segment that filters apply to; an erasure has none
# and goes to every subscription of customer.erased, so downstream copies are erased too.
FILTERABLE = frozenset(EVENT_TYPES) - {"customer.erased"}
MAX_SUBSCRIPTIONS = 100
MAX_URL = 2048
SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)


# --- URLs and the SSRF guard ---------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A checked webhook URL: where to connect, and what to send as Host and SNI."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_hosts: frozenset[str], *,
              resolve: bool = True) -> Target:
    """Parse and vet a webhook URL; ValidationError says what is wrong.

    Refused: schemes other than https (http only for allow-listed hosts), credentials in the
    URL, fragments, and any host that resolves to a private, loopback, link-local, multicast or
    otherwise non-public address, unless the host is in ``CRM_WEBHOOK_ALLOW_HOSTS``. Delivery
    checks again and connects to the checked address, so DNS rebinding does not get around it.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise ValidationError(f"url: an absolute http(s) URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"url: {exc}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationError("url: must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("url: must not carry credentials (user:password@); "
                              "verify deliveries with the signing secret instead")
    if parts.fragment:
        raise ValidationError("url: must not have a #fragment")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError("url: must not contain spaces or control characters")
    allowed = host in allow_hosts
    if parts.scheme == "http" and not allowed:
        raise ValidationError("url: must use https (plain http only for hosts in "
                              "CRM_WEBHOOK_ALLOW_HOSTS)")
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    addresses: tuple[str, ...] = ()
    if resolve:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValidationError(f"url: the host {host!r} does not resolve ({exc})") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ValidationError(f"url: the host {host!r} does not resolve")
        if not allowed:
            bad = [a for a in addresses if _blocked(a)]
            if bad:
                raise ValidationError(
                    f"url: {host!r} resolves to a private, loopback or link-local address "
                    f"({bad[0]}); receivers must be public, or their host allow-listed in "
                    "CRM_WEBHOOK_ALLOW_HOSTS")
    return Target(parts.scheme, host, port, path, addresses)


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


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


_COLUMNS = ("id, url, event_types, filters, description, status, disabled_reason, disabled_at,"
            " consecutive_failures, failing_since, paused_until, created_at, event_cursor")


def _public(row: tuple) -> dict[str, Any]:
    return {"id": str(row[0]), "url": row[1], "events": list(row[2]), "filters": row[3],
            "description": row[4], "status": row[5], "disabled_reason": row[6],
            "disabled_at": row[7].isoformat() if row[7] else None,
            "consecutive_failures": row[8],
            "failing_since": row[9].isoformat() if row[9] else None,
            "paused_until": row[10].isoformat() if row[10] else None,
            "created_at": row[11].isoformat(), "after_event": str(row[12])}


def create(conn: psycopg.Connection, settings: Settings, *, url: str, types: list[str],
           filters: dict[str, Any] | None = None, description: str | None = None,
           created_by: str | None = None) -> dict[str, Any]:
    """A new active subscription for events from now on; the answer holds the ``secret``."""
    check_url(url, settings.webhook_allow_hosts)
    types = _validate_types(types)
    filters = _validate_filters(filters)
    count = conn.execute("SELECT count(*) FROM webhooks").fetchone()[0]  # type: ignore[index]
    if count >= MAX_SUBSCRIPTIONS:
        raise ValidationError(f"at most {MAX_SUBSCRIPTIONS} subscriptions; delete unused ones")
    secret = new_secret()
    key = secretbox.server_key(settings)
    row = conn.execute(
        "INSERT INTO webhooks (url, event_types, filters, description, secret_enc,"
        " event_cursor, created_by)"
        " VALUES (%s, %s, %s, %s, %s, (SELECT coalesce(max(id), 0) FROM events), %s)"
        f" RETURNING {_COLUMNS}",
        (url, types, json.dumps(filters), description,
         secretbox.encrypt(key, secret, "webhook-secret"), created_by)).fetchone()
    assert row is not None
    return {**_public(row), "secret": secret}


def _counts(conn: psycopg.Connection, ids: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {i: {"pending": 0, "delivered": 0, "failed": 0}
                                      for i in ids}
    for wid, status, n in conn.execute(
            "SELECT webhook_id, status, count(*) FROM webhook_deliveries"
            " WHERE webhook_id = ANY(%s) GROUP BY 1, 2", (ids,)):
        out[wid][status] = n
    return out


def list_all(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every subscription with its delivery counts (never the secret)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM webhooks ORDER BY id").fetchall()
    counts = _counts(conn, [r[0] for r in rows])
    return [{**_public(r), "deliveries": counts[r[0]]} for r in rows]


def _id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFoundError(f"no webhook {text!r}")
    return int(text)


def get(conn: psycopg.Connection, webhook_id: str) -> dict[str, Any]:
    """One subscription with its delivery counts; NotFoundError if there is none."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = %s",
                       (_id(webhook_id),)).fetchone()
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    return {**_public(row), "deliveries": _counts(conn, [row[0]])[row[0]]}


def delete(conn: psycopg.Connection, webhook_id: str) -> None:
    """Remove a subscription with its queued deliveries and their history."""
    if conn.execute("DELETE FROM webhooks WHERE id = %s", (_id(webhook_id),)).rowcount == 0:
        raise NotFoundError(f"no webhook {webhook_id!r}")


def enable(conn: psycopg.Connection, webhook_id: str) -> dict[str, Any]:
    """Re-activate a disabled subscription; its queued deliveries are retried at once.

    Events published while it was disabled are delivered too (its cursor did not move).
    """
    wid = _id(webhook_id)
    n = conn.execute(
        "UPDATE webhooks SET status = 'active', disabled_reason = NULL, disabled_at = NULL,"
        " consecutive_failures = 0, failing_since = NULL, paused_until = NULL WHERE id = %s",
        (wid,)).rowcount
    if n == 0:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now(), first_attempt_at = NULL"
                 " WHERE webhook_id = %s AND status = 'pending'", (wid,))
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
    rows = conn.execute(
        "SELECT d.id, d.event_id, e.type, d.status, d.attempts, d.next_attempt_at,"
        " d.delivered_at, d.last_status_code, d.last_error, d.created_at,"
        " coalesce((SELECT json_agg(json_build_object('attempt', a.attempt,"
        "   'started_at', a.started_at, 'duration_ms', round(a.duration_ms::numeric, 1),"
        "   'status_code', a.status_code, 'error', a.error) ORDER BY a.attempt)"
        "   FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]')"
        " FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id"
        " WHERE d.webhook_id = %(w)s AND (%(s)s::text IS NULL OR d.status = %(s)s)"
        " AND (%(b)s::bigint IS NULL OR d.event_id < %(b)s)"
        " ORDER BY d.event_id DESC LIMIT %(n)s",
        {"w": wid, "s": status, "b": before, "n": limit + 1}).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"delivery_id": str(r[0]), "event_id": str(r[1]), "event_type": r[2],
              "status": r[3], "attempts": r[4],
              "next_attempt_at": r[5].isoformat() if r[3] == "pending" else None,
              "delivered_at": r[6].isoformat() if r[6] else None,
              "last_status_code": r[7], "last_error": r[8], "created_at": r[9].isoformat(),
              "attempt_log": r[10]} for r in rows]
    return {"deliveries": items, "next_cursor": str(rows[-1][1]) if more else None}


# --- The queue (worker side) --------------------------------------------------------------

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


def fan_out(conn: psycopg.Connection, *, batch: int = 5000) -> int:
    """Queue deliveries for events new to each active subscription; return how many queued.

    Event ids become visible in increasing order (their writers hold the ``scoring_state``
    lock), so a cursor never passes an event that commits later. Each batch is a transaction.
    """
    queued = 0
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM webhooks WHERE status = 'active' ORDER BY id").fetchall()]
    conn.commit()
    for wid in ids:
        while True:
            row = conn.execute(_FAN_OUT, {"w": wid, "batch": batch,
                                          "filterable": sorted(FILTERABLE)}).fetchone()
            conn.commit()
            if row is None:
                break
            queued += row[0]
            if row[1] < batch:
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
RETURNING d.id, d.attempts, w.id, w.url, w.secret_enc, e.id, e.type, e.customer_id, e.run_id,
          e.created_at, e.data
"""


# Decrypted secrets by ciphertext (a worker process posts many events per subscription).
_SECRETS: dict[bytes, str] = {}


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery stays invisible: well past one attempt's timeout."""
    return 2 * settings.webhook_timeout_seconds + 5


def claim(conn: psycopg.Connection, settings: Settings, key: bytes) -> Job | None:
    """Lease the oldest due delivery of an active, unpaused subscription (committed)."""
    row = conn.execute(_CLAIM, {"lease": lease_seconds(settings)}).fetchone()
    conn.commit()
    if row is None:
        return None
    event = {"id": str(row[5]), "type": row[6], "customer_id": row[7], "run_id": row[8],
             "occurred_at": row[9].isoformat(), "data": row[10]}
    blob = bytes(row[4])
    secret = _SECRETS.get(blob)
    if secret is None:
        if len(_SECRETS) > 4 * MAX_SUBSCRIPTIONS:
            _SECRETS.clear()
        secret = _SECRETS[blob] = secretbox.decrypt(key, blob, "webhook-secret")
    return Job(str(row[0]), row[1], row[2], row[3], secret, event)


def backoff(settings: Settings, failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failures (±20 % jitter)."""
    base = settings.webhook_retry_base_seconds * 2 ** min(failures - 1, 30)
    return min(base, settings.webhook_retry_max_seconds) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter)


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
        conn.execute(_DELIVERED, attempt)
        conn.commit()
        return "delivered"
    with conn.transaction():
        conn.execute(_ATTEMPT, attempt)
        what = f"HTTP {status_code}" if status_code is not None else (error or "failed")
        row = conn.execute(
            "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1,"
            " failing_since = coalesce(failing_since, now()) WHERE id = %s"
            " RETURNING consecutive_failures, extract(epoch FROM now() - failing_since), status",
            (job.webhook_id,)).fetchone()
        if row is None:  # the subscription was deleted meanwhile
            return "failed"
        failures, failing_for, state = row
        gone = status_code == 410
        if gone or failing_for >= settings.webhook_retry_window_seconds:
            # The endpoint is gone or has been down for the whole window: stop, keep the queue
            # (enable delivers it).
            reason = ("the receiver answered 410 Gone" if gone else
                      f"deliveries failed for {failing_for / 3600:.2f} h "
                      f"({failures} attempts in a row); last: {what}")
            conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now(), last_status_code = %s,"
                " last_error = %s WHERE id = %s AND status = 'pending'",
                (status_code, error or what, job.delivery_id))
            if state == "active":
                conn.execute(
                    "UPDATE webhooks SET status = 'disabled', disabled_reason = %s,"
                    " disabled_at = now(), paused_until = NULL WHERE id = %s",
                    (reason, job.webhook_id))
            return "pending"
        age = conn.execute("SELECT extract(epoch FROM now() - first_attempt_at)"
                           " FROM webhook_deliveries WHERE id = %s",
                           (job.delivery_id,)).fetchone()
        if age is not None and age[0] is not None \
                and age[0] >= settings.webhook_retry_window_seconds:
            # This one event has failed for the window while others got through: give it up.
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'failed', last_status_code = %s,"
                " last_error = %s WHERE id = %s AND status = 'pending'",
                (status_code, error or what, job.delivery_id))
            return "failed"
        conn.execute("UPDATE webhooks SET paused_until = now() + make_interval(secs => %s)"
                     " WHERE id = %s", (backoff(settings, failures), job.webhook_id))
        conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => %s),"
            " last_status_code = %s, last_error = %s WHERE id = %s AND status = 'pending'",
            (backoff(settings, max(failures, job.attempt)), status_code, error or what,
             job.delivery_id))
        return "pending"


# --- Signing ------------------------------------------------------------------------------

def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does (used by the tests and shown in the README)."""
    delivery_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((now or time.time()) - int(ts)) > tolerance:
        return False
    expected = sign(secret, delivery_id, int(ts), body).split(",", 1)[1]
    return any(hmac.compare_digest(expected, sig.split(",", 1)[1])
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


def payload(job: Job) -> bytes:
    """The request body: the event as the feed shows it."""
    return json.dumps(job.event, separators=(",", ":"), sort_keys=True).encode()
