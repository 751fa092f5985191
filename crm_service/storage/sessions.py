"""Console sessions (SQL): the ``console_sessions`` table, read joined with the session's key.

Tokens are stored as SHA-256 hashes only; callers pass the hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True)
class LiveSession:
    """A session that is neither expired nor idle, of a key that is not revoked."""

    key_id: str
    key_name: str
    scopes: list[str]
    csrf_token: str
    expires_at: datetime
    stale: bool  # last seen longer ago than the touch interval


def open_session(conn: psycopg.Connection, token_hash: bytes, key_id: str, csrf_token: str,
                 *, hours: int, idle_minutes: int) -> None:
    """Store a new session (and sweep expired or idle ones, so the table stays small)."""
    conn.execute("DELETE FROM console_sessions WHERE expires_at < now()"
                 " OR last_seen_at < now() - make_interval(mins => %s)", (idle_minutes,))
    conn.execute(
        "INSERT INTO console_sessions (token_hash, key_id, csrf_token, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(hours => %s))",
        (token_hash, key_id, csrf_token, hours))


def live_session(conn: psycopg.Connection, token_hash: bytes, *, idle_minutes: int,
                 touch_seconds: int) -> LiveSession | None:
    """The live session with ``token_hash``, or None."""
    with conn.cursor(row_factory=class_row(LiveSession)) as cur:
        return cur.execute(
            "SELECT k.id AS key_id, k.name AS key_name, k.scopes, s.csrf_token, s.expires_at,"
            " s.last_seen_at < now() - make_interval(secs => %s) AS stale"
            " FROM console_sessions s JOIN api_keys k ON k.id = s.key_id"
            " WHERE s.token_hash = %s AND s.expires_at > now() AND k.revoked_at IS NULL"
            " AND s.last_seen_at > now() - make_interval(mins => %s)",
            (touch_seconds, token_hash, idle_minutes)).fetchone()


def touch_session(conn: psycopg.Connection, token_hash: bytes) -> None:
    """Mark the session seen now."""
    conn.execute("UPDATE console_sessions SET last_seen_at = now() WHERE token_hash = %s",
                 (token_hash,))


def close_session(conn: psycopg.Connection, token_hash: bytes) -> None:
    """Delete the session (no error if there is none)."""
    conn.execute("DELETE FROM console_sessions WHERE token_hash = %s", (token_hash,))
