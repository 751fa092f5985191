"""Applying the versioned schema migrations with yoyo-migrations.

Two processes may run ``db upgrade`` at once (two containers starting together): a PostgreSQL
advisory lock serialises them, so the second waits and then finds nothing left to apply.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations
from yoyo.connections import DatabaseURI

from crm_service.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

# Arbitrary constant shared by every crm-service process: "crm-migr" in ASCII.
_ADVISORY_LOCK_KEY = 0x63726D2D6D696772


def _yoyo_uri(dsn: str) -> str:
    """Translate any libpq DSN into the URI form yoyo's psycopg 3 backend understands."""
    info = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = info.pop("user", None)
    password = info.pop("password", None)
    dbname = info.pop("dbname", None)
    # host/port and everything else travel as query arguments: yoyo passes them to psycopg.
    return str(
        DatabaseURI(
            scheme="postgresql+psycopg",
            username=user,
            password=password,
            hostname=None,
            port=None,
            database=dbname or "",
            args=info,
        )
    )


def _migrations():
    return read_migrations(str(resources.files("crm_service") / "migrations"))


def upgrade(dsn: str) -> list[str]:
    """Apply every pending migration; return the ids applied (empty when up to date)."""
    try:
        lock_conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
    with lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            backend = get_backend(_yoyo_uri(dsn))
            migrations = _migrations()
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
            applied = [m.id for m in pending]
            backend.connection.close()
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    for mid in applied:
        log.info("applied migration %s", mid)
    return applied


def pending(dsn: str) -> list[str]:
    """Ids of migrations not yet applied."""
    backend = get_backend(_yoyo_uri(dsn))
    try:
        return [m.id for m in backend.to_apply(_migrations())]
    finally:
        backend.connection.close()
