"""Connections to PostgreSQL: resolving the DSN and building the connection pool."""

from __future__ import annotations

import logging
import time
from weakref import WeakKeyDictionary

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from crm_service.errors import DatabaseUnavailableError
from crm_service.platform.config import Settings

log = logging.getLogger(__name__)

# What callers outside the storage modules catch for "the database said no", and check.
DatabaseError = psycopg.Error
TransactionStatus = psycopg.pq.TransactionStatus
# The database is down, restarting, unreachable, or a statement hit its timeout
# (QueryCanceled is an OperationalError): the request may succeed if retried later.
DatabaseUnavailable = (psycopg.OperationalError, PoolTimeout)
# The pool type the API holds, so modules above need not import psycopg_pool themselves.
Pool = ConnectionPool


def resolve_dsn(settings: Settings) -> str:
    """Return the DSN in use: ``DATABASE_URL``, or the embedded server (started on demand)."""
    if settings.database_url:
        return settings.database_url
    from crm_service.platform.embedded import start_embedded

    return start_embedded(settings.data_dir)


def _configure(statement_timeout_ms: int, lock_timeout_ms: int = 0):
    def configure(conn: psycopg.Connection) -> None:
        # Sessions run in UTC; the reporting zone is applied explicitly where it matters.
        conn.execute(
            "SELECT set_config('timezone', 'UTC', false), "
            "set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
            (str(statement_timeout_ms), str(lock_timeout_ms)),
        )
        conn.commit()

    return configure


RECONNECT_TIMEOUT_SECONDS = 2.0

# A pooled connection idle for longer than this is checked (one empty round trip) before use:
# after a database restart the pool still holds connections to the old server, and each would
# fail one request. Connections reused sooner, the common case under load, are not checked:
# one that broke while in use was already discarded when it came back.
# (Measured from the last checkout, not the return: a ``reset`` callback would move every
# return to the pool's worker thread, which cost 15% of lookup throughput.)
IDLE_CHECK_SECONDS = 1.0
_taken_at: WeakKeyDictionary[psycopg.Connection, float] = WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection) -> None:
    now = time.monotonic()
    taken = _taken_at.get(conn)
    if taken is None or now - taken > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)
    _taken_at[conn] = now


def create_pool(dsn: str, settings: Settings, *, name: str = "crm",
                autocommit: bool = False, wait: bool = True, max_size: int | None = None,
                timeout: float | None = None, statement_timeout_ms: int | None = None,
                lock_timeout_ms: int = 0, check: bool = True) -> ConnectionPool:
    """Open a connection pool and (with ``wait``) wait until one connection works.

    The API passes ``wait=False``: it starts while the database is down, answers 503 until it
    is back, and needs no restart then.

    ``autocommit`` pools serve reads: each statement is its own transaction, so a lookup is
    one round trip instead of three (BEGIN, the query, COMMIT). Code that needs several
    statements in one snapshot uses ``conn.transaction()`` on them.

    ``max_size``, ``timeout`` (to get a connection) and ``statement_timeout_ms`` override the
    settings; ``lock_timeout_ms`` (0: none) bounds waits for locks; ``check=False`` skips the
    check of idle connections (whose round trip could wait on a frozen server). The API's
    lookup lane uses them to fail fast rather than hold up its event loop.

    Raises
    ------
    DatabaseUnavailableError
        If no connection can be made within the pool timeout.
    """
    pool = ConnectionPool(
        dsn,
        min_size=min(settings.pool_min_size, max_size or settings.pool_max_size),
        max_size=max_size or settings.pool_max_size,
        timeout=timeout if timeout is not None else settings.pool_timeout_seconds,
        # Give up a failing reconnection after 2 s (attempts at 0, 1 and 2 s): the next request
        # then starts a fresh one at once, so service resumes within about a second of the
        # database coming back instead of after psycopg_pool's growing backoff (up to minutes).
        reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
        check=_check_if_idle if check else None,
        configure=_configure(statement_timeout_ms or settings.statement_timeout_ms,
                             lock_timeout_ms),
        kwargs={"autocommit": True} if autocommit else None,
        name=name,
        open=False,
    )
    try:
        pool.open(wait=wait and settings.pool_min_size > 0,
                  timeout=timeout if timeout is not None else settings.pool_timeout_seconds)
    except Exception as exc:
        pool.close()
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


def connect(dsn: str, settings: Settings, **kwargs) -> psycopg.Connection:
    """One connection outside the pool (CLI commands, migrations)."""
    try:
        conn = psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
    _configure(settings.statement_timeout_ms)(conn)
    return conn


def describe_dsn(dsn: str) -> str:
    """``dbname on host:port as user``: which database a DSN names, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # an unparseable DSN fails to connect with its own message
        return "an unparseable DSN"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f" as {info['user']}" if info.get("user") else ""
    return f"{info.get('dbname') or '(default)'} on {host}{port}{user}"


def redact(dsn: str) -> str:
    """The DSN with any password replaced, for logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if info.get("password"):
        info["password"] = "***"  # noqa: S105 - a mask, not a secret
    return psycopg.conninfo.make_conninfo("", **info)


def ping(pool: ConnectionPool, timeout: float) -> None:
    """Raise unless PostgreSQL answers a trivial query within ``timeout`` seconds (readiness)."""
    with pool.connection(timeout=timeout) as conn:
        conn.execute("SELECT 1")
