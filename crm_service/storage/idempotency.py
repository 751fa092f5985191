"""Idempotency-Key records: replay a finished response, refuse a reused key or a concurrent one.

The claim is committed on its own before the work starts, so a second request with the same key
sees it at once (409 while running). The response is stored in the same transaction as the
writes it describes, so a replay can never describe writes that were rolled back.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import psycopg

from crm_service.errors import IdempotencyConflictError, IdempotencyMismatchError

MAX_KEY_LENGTH = 255
PURGE_EVERY_SECONDS = 600.0
_last_purge = 0.0  # per process: purging is idempotent, so processes need not coordinate


@dataclass(frozen=True)
class StoredResponse:
    """A response recorded for replay, byte for byte."""

    status: int
    content_type: str
    body: bytes


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests "the same": method, path and the raw body."""
    h = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        h.update(part)
    return h.digest()


def claim(
    conn: psycopg.Connection,
    api_key_id: str,
    key: str,
    fingerprint: bytes,
    *,
    ttl_hours: int,
    stale_seconds: int,
) -> StoredResponse | None:
    """Claim ``key`` for this request, committing at once.

    Returns the stored response when the same request already finished (replay). Raises
    :class:`IdempotencyMismatchError` for a different body and :class:`IdempotencyConflictError`
    while the first request is still running. An expired record, or a claim abandoned for longer
    than ``stale_seconds`` (its process died), is taken over. Every ten minutes a process also
    deletes all expired records, so the table stays bounded.
    """
    global _last_purge
    if time.monotonic() - _last_purge > PURGE_EVERY_SECONDS:
        _last_purge = time.monotonic()
        purge_expired(conn, ttl_hours)
    with conn.transaction():
        row = conn.execute(
            """
            INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash, state)
            VALUES (%(k)s, %(key)s, %(h)s, 'running')
            ON CONFLICT (api_key_id, idempotency_key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, state = 'running', created_at = now(),
                    response_status = NULL, response_type = NULL, response_body = NULL,
                    completed_at = NULL
                WHERE idempotency_records.created_at < now() - make_interval(hours => %(ttl)s)
                   OR (idempotency_records.state = 'running'
                       AND idempotency_records.created_at
                           < now() - make_interval(secs => %(stale)s))
            RETURNING state
            """,
            {"k": api_key_id, "key": key, "h": fingerprint, "ttl": ttl_hours,
             "stale": stale_seconds},
        ).fetchone()
        if row is not None:
            return None
        existing = conn.execute(
            "SELECT request_hash, state, response_status, response_type, response_body"
            " FROM idempotency_records WHERE api_key_id = %s AND idempotency_key = %s",
            (api_key_id, key),
        ).fetchone()
    assert existing is not None
    if bytes(existing[0]) != fingerprint:
        raise IdempotencyMismatchError(
            "this Idempotency-Key was already used with a different request; use a new key"
        )
    if existing[1] == "running":
        raise IdempotencyConflictError(
            "a request with this Idempotency-Key is still being processed; retry later"
        )
    return StoredResponse(existing[2], existing[3], bytes(existing[4]))


def complete(
    conn: psycopg.Connection, api_key_id: str, key: str, response: StoredResponse
) -> None:
    """Record the response (call inside the transaction that holds the request's writes)."""
    conn.execute(
        "UPDATE idempotency_records SET state = 'done', response_status = %s,"
        " response_type = %s, response_body = %s, completed_at = now()"
        " WHERE api_key_id = %s AND idempotency_key = %s",
        (response.status, response.content_type, response.body, api_key_id, key),
    )


def release(conn: psycopg.Connection, api_key_id: str, key: str) -> None:
    """Drop a claim whose request failed, so the client can retry with the same key."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM idempotency_records WHERE api_key_id = %s AND idempotency_key = %s"
            " AND state = 'running'",
            (api_key_id, key),
        )


def purge_expired(conn: psycopg.Connection, ttl_hours: int) -> int:
    """Delete records older than the retention window; return how many."""
    with conn.transaction():
        cur = conn.execute(
            "DELETE FROM idempotency_records"
            " WHERE created_at < now() - make_interval(hours => %s)",
            (ttl_hours,),
        )
        return cur.rowcount
