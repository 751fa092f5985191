"""The writers' lock: how REST batches and bulk imports share the order and customer tables.

One PostgreSQL advisory lock, held for a transaction. REST batches take it shared: they run side
by side, each locking rows in key order, so they cannot deadlock with one another. A bulk import
takes it exclusively: it never interleaves its row locks (taken chunk by chunk, over many
seconds) with a batch's, so the two cannot deadlock either, and two imports run one after the
other. A batch that cannot get the lock in time gets :class:`IngestionBusyError` (HTTP 503 with
Retry-After) instead of waiting out the import.
"""

from __future__ import annotations

import psycopg

from crm_service.errors import IngestionBusyError

# "crm-wrtr" in ASCII.
_WRITERS_LOCK = 0x63726D2D77727472


def lock_shared(conn: psycopg.Connection, wait_seconds: float) -> None:
    """Join the REST writers, waiting at most ``wait_seconds`` for a running import."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(wait_seconds * 1000)}",))
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_WRITERS_LOCK,))
    except psycopg.errors.LockNotAvailable:
        raise IngestionBusyError(
            "a bulk import is writing; retry in a few seconds", retry_after=5
        ) from None
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', true)")


def lock_exclusive(conn: psycopg.Connection) -> None:
    """Take the writers' lock alone (bulk imports), waiting for running batches to finish."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITERS_LOCK,))
