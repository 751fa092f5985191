"""API keys: minting, listing, revoking and verifying.

A key reads ``crm_<id>_<secret>``. Only SHA-256 of the secret is stored; the secret carries 256
bits of entropy, so a fast hash is enough (no password-style stretching needed) and verification
stays cheap on every request. The key itself is shown once, at creation, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from crm_service.errors import ApiKeyNotFoundError, ValidationError
from crm_service.storage import keys as store
from crm_service.storage.keys import ApiKey
from crm_service.vocabulary import SCOPES

if TYPE_CHECKING:
    import psycopg

__all__ = ["ApiKey", "VerifiedKeys", "create_key", "list_keys", "parse_scopes", "revoke_key",
           "verify_token"]

PREFIX = "crm"
Connect = Callable[[], AbstractContextManager["psycopg.Connection"]]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_scopes(text: str) -> list[str]:
    """Split ``S1,S2`` and check every scope is known."""
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes:
        raise ValidationError("at least one scope is required; known: " + ", ".join(SCOPES))
    if unknown:
        raise ValidationError(
            f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}"
        )
    return scopes


def create_key(conn: psycopg.Connection, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Mint a key; return it and the plaintext token (shown to the caller once)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationError("key name must be 1-100 characters")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = store.insert_key(conn, key_id, name, _digest(secret), scopes)
    return key, f"{PREFIX}_{key_id}_{secret}"


def list_keys(conn: psycopg.Connection) -> list[ApiKey]:
    """All keys, newest first (revoked ones included)."""
    return store.all_keys(conn)


def revoke_key(conn: psycopg.Connection, key_id: str) -> ApiKey:
    """Revoke a key; revoking twice keeps the first revocation time."""
    key = store.mark_revoked(conn, key_id)
    if key is None:
        raise ApiKeyNotFoundError(f"no API key with id {key_id!r}")
    return key


def verify_token(conn: psycopg.Connection, token: str) -> ApiKey | None:
    """The active key a bearer token belongs to, or None (unknown, malformed or revoked)."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    stored = store.stored_key(conn, parts[1])
    if stored is None or stored.key.revoked_at is not None:
        return None
    if not hmac.compare_digest(stored.secret_hash, _digest(parts[2])):
        return None
    return stored.key


class VerifiedKeys:
    """Keys verified recently in this process, so a busy API does not ask the database each time.

    A successful check is reused for ``ttl_seconds``; failures are never cached, so a new key
    works at once. A revoked key therefore stops working within ``ttl_seconds`` in every
    process (``CRM_AUTH_CACHE_SECONDS``; 0 checks every request). Entries are keyed by the
    SHA-256 of the token and hold no secret.

    :meth:`cached` with ``refresh`` re-verifies a key in the background once half its TTL has
    passed, so a key in steady use never expires in the middle of a burst of lookups (each
    request after an expiry would otherwise go the slow way until one re-verified it: stalls
    of 100-200 ms every TTL, measured under load in issue 18). A refreshed entry's TTL counts
    from when its check began, so a revoked key still stops working within ``ttl_seconds``.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}
        self._refreshing: set[bytes] = set()
        self._lock = threading.Lock()

    def cached(self, token: str, refresh: Connect | None = None) -> ApiKey | None:
        """The key of ``token`` if this process verified it within the TTL, else None.

        Never asks the database in the calling thread. With ``refresh`` (a connection factory),
        a hit past half its TTL is re-verified on a background thread meanwhile.
        """
        if self.ttl <= 0:
            return None
        digest = _digest(token)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
            if hit is None or hit[1] <= now:
                return None
            due = refresh is not None and hit[1] - now < self.ttl / 2 \
                and digest not in self._refreshing
            if due:
                self._refreshing.add(digest)
        if due:
            threading.Thread(target=self._refresh, args=(refresh, token, digest), daemon=True,
                             name="crm-key-refresh").start()
        return hit[0]

    def _refresh(self, connection: Connect, token: str, digest: bytes) -> None:
        began = time.monotonic()
        try:
            with connection() as conn:
                key = verify_token(conn, token)
        except Exception:  # noqa: BLE001 - the entry stays until it expires; then the slow way
            with self._lock:
                self._refreshing.discard(digest)
            return
        with self._lock:
            self._refreshing.discard(digest)
            if key is None:  # revoked (or expired) meanwhile
                self._entries.pop(digest, None)
            else:
                self._entries[digest] = (key, began + self.ttl)

    def verify(self, connection: Connect, token: str) -> ApiKey | None:
        """Like :func:`verify_token`; ``connection()`` is entered only on a cache miss."""
        if self.ttl <= 0:
            with connection() as conn:
                return verify_token(conn, token)
        digest = _digest(token)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with connection() as conn:
            key = verify_token(conn, token)
        with self._lock:
            if key is None:
                self._entries.pop(digest, None)
            else:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[digest] = (key, now + self.ttl)
        return key
