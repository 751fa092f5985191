"""API keys (SQL): the ``api_keys`` table. Only a hash of each secret is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        """True when the key holds ``scope`` or ``admin``."""
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class StoredKey:
    """A key with the hash of its secret, for verification only."""

    key: ApiKey
    secret_hash: bytes


_COLUMNS = "id, name, scopes, created_at, revoked_at"


def insert_key(conn: psycopg.Connection, key_id: str, name: str, secret_hash: bytes,
               scopes: list[str]) -> ApiKey:
    """Store a new key."""
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        key = cur.execute(
            "INSERT INTO api_keys (id, name, secret_hash, scopes) VALUES (%s, %s, %s, %s)"
            f" RETURNING {_COLUMNS}", (key_id, name, secret_hash, scopes)).fetchone()
    assert key is not None  # INSERT ... RETURNING returns its row
    return key


def all_keys(conn: psycopg.Connection) -> list[ApiKey]:
    """All keys, newest first (revoked ones included)."""
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
                           ).fetchall()


def mark_revoked(conn: psycopg.Connection, key_id: str) -> ApiKey | None:
    """Revoke a key (keeping the first revocation time); None when there is no such key."""
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        return cur.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s"
            f" RETURNING {_COLUMNS}", (key_id,)).fetchone()


def stored_key(conn: psycopg.Connection, key_id: str) -> StoredKey | None:
    """The key with id ``key_id`` and its secret's hash, or None."""
    row = conn.execute(f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = %s",
                       (key_id,)).fetchone()
    if row is None:
        return None
    return StoredKey(ApiKey(row[0], row[1], list(row[2]), row[3], row[4]), bytes(row[5]))
