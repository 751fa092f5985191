"""Server-side sessions of the agent console.

Signing in with an API key opens a session: a random token goes to the browser in a cookie, and
only its SHA-256 is stored, with the key it was opened with and the session's CSRF token. The
key itself is never stored again, shown, or put in a URL.

Every request re-reads the session joined with its key, so revoking a key ends its sessions at
once (there is no cache here, unlike bearer-token checks). A session ends when it has been idle
for ``CRM_CONSOLE_IDLE_MINUTES`` or is ``CRM_CONSOLE_SESSION_HOURS`` old, whichever is first.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_service.access.api_keys import ApiKey, verify_token
from crm_service.errors import SignInError
from crm_service.storage import sessions as store

if TYPE_CHECKING:
    import psycopg

    from crm_service.platform.config import Settings

# The console's scope: agents look customers up by contact details, which are personal data.
CONSOLE_SCOPE = "customers:read"
# last_seen_at is written at most this often per session (seconds): a page view is a read.
TOUCH_EVERY = 60


@dataclass(frozen=True)
class ConsoleSession:
    """A live session: who is signed in (the key's id and name) and the CSRF token."""

    key_id: str
    key_name: str
    scopes: tuple[str, ...]
    csrf_token: str
    expires_at: datetime

    def allows(self, scope: str) -> bool:
        """Whether the key holds ``scope`` (``admin`` holds every scope)."""
        return "admin" in self.scopes or scope in self.scopes


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def sign_in(conn: psycopg.Connection, settings: Settings, api_key: str) -> tuple[str, ApiKey]:
    """Open a session for an active key with the console scope; return (token, key).

    Raises :class:`SignInError` (``invalid``: unknown, malformed or revoked key; ``scope``: the
    key lacks ``customers:read``). Expired sessions are swept here, so the table stays small.
    """
    key = verify_token(conn, api_key.strip())
    if key is None:
        raise SignInError("invalid")
    if not key.allows(CONSOLE_SCOPE):
        raise SignInError("scope")
    token = secrets.token_urlsafe(32)
    with conn.transaction():
        store.open_session(conn, _hash(token), key.id, secrets.token_urlsafe(32),
                           hours=settings.console_session_hours,
                           idle_minutes=settings.console_idle_minutes)
    return token, key


def resolve(conn: psycopg.Connection, settings: Settings, token: str) -> ConsoleSession | None:
    """The live session behind a cookie's token, or None (unknown, expired, idle, key revoked).

    Marks the session seen (at most once a minute). ``conn`` may be in autocommit mode.
    """
    if not token or len(token) > 100:
        return None
    live = store.live_session(conn, _hash(token), idle_minutes=settings.console_idle_minutes,
                              touch_seconds=TOUCH_EVERY)
    if live is None:
        return None
    session = ConsoleSession(live.key_id, live.key_name, tuple(live.scopes), live.csrf_token,
                             live.expires_at)
    if not session.allows(CONSOLE_SCOPE):  # the key's scopes changed since sign-in
        return None
    if live.stale:
        store.touch_session(conn, _hash(token))
    return session


def sign_out(conn: psycopg.Connection, token: str) -> None:
    """End the session behind ``token`` (no error if there is none)."""
    store.close_session(conn, _hash(token))
