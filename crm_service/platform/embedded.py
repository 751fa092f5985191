"""The embedded PostgreSQL used when no ``DATABASE_URL`` is configured.

A private server from the ``pgserver`` package (PostgreSQL binaries shipped in a wheel) keeps its
cluster under ``CRM_DATA_DIR/pg`` and listens on a Unix socket only, so it never collides with
another PostgreSQL on the machine. The server stops when the last process that started or
attached to it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql

from crm_service.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

DATABASE_NAME = "crm"

# initdb's defaults (128 MB buffers, a checkpoint every 1 GB of WAL) make bulk loads spend their
# time flushing. These suit a developer machine or a single-box deployment; an external server
# is the operator's to tune.
TUNING = {
    "shared_buffers": "256MB",
    "wal_buffers": "16MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "work_mem": "32MB",
    "maintenance_work_mem": "256MB",
    # No replicas or WAL archive on an embedded server: a table created and filled in one
    # transaction (a scoring run's partition, a bulk load's staging) then skips the WAL.
    "wal_level": "minimal",
    "max_wal_senders": "0",
}


def start_embedded(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or attach to) the embedded server and return a DSN for ``database``.

    The database is created on first use.
    """
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here, so silence it locally.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver

            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            if _tune(server.get_uri()):
                # Some settings only apply at start. Restarting is only possible when no other
                # process holds the server; otherwise they apply at its next start.
                server.cleanup()
                server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare exceptions from pg_ctl
            raise DatabaseUnavailableError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}; "
                "check the log in that directory, or set DATABASE_URL to use an external server"
            ) from exc
    admin_dsn = server.get_uri()
    ensure_database(admin_dsn, database)
    return with_database(admin_dsn, database)


def _tune(admin_dsn: str) -> bool:
    """Apply :data:`TUNING`; return True when a restart is needed for it to take effect."""
    restart = False
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name, value in TUNING.items():
            current, context, pending = conn.execute(
                "SELECT current_setting(name), context, pending_restart FROM pg_settings"
                " WHERE name = %s", (name,)).fetchone()  # type: ignore[misc]
            if current == value:
                continue
            if not pending:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(value)))
            restart = restart or context == "postmaster"
        conn.execute("SELECT pg_reload_conf()")
    return restart


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at another database on the same server (URL form)."""
    parts = urlsplit(dsn)
    return parts._replace(path="/" + database).geturl()


def socket_dir(dsn: str) -> str | None:
    """The Unix-socket directory in a ``?host=/path`` DSN, if any."""
    return parse_qs(urlsplit(dsn).query).get("host", [None])[0]


def ensure_database(admin_dsn: str, database: str) -> None:
    """Create ``database`` if it does not exist yet (safe against a concurrent creator)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created database %s", database)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            pass


def psql_executable() -> str | None:
    """The psql binary shipped with the embedded server, if present."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    exe = Path(pgserver.POSTGRES_BIN_PATH) / "psql"  # type: ignore[attr-defined]
    return str(exe) if exe.exists() else None
