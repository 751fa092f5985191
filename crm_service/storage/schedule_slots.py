"""Schedule slots (SQL): which daily slots a worker has taken, so each is run once.

Callers hold :func:`lock_slots` inside one transaction while they check and record a slot, so
two workers never both take the same slot.
"""

from __future__ import annotations

from datetime import datetime

import psycopg


def lock_slots(conn: psycopg.Connection) -> None:
    """Serialise slot takers until the end of the current transaction."""
    conn.execute("LOCK TABLE schedule_slots IN SHARE ROW EXCLUSIVE MODE")


def slot_taken(conn: psycopg.Connection, slot: datetime) -> bool:
    """Whether ``slot`` was recorded already."""
    return conn.execute("SELECT 1 FROM schedule_slots WHERE slot = %s", (slot,)).fetchone() \
        is not None


def no_slot_yet(conn: psycopg.Connection) -> bool:
    """True on a database where the schedule never recorded a slot."""
    row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM schedule_slots)").fetchone()
    return bool(row and row[0])


def record_slot(conn: psycopg.Connection, slot: datetime, note: str,
                run_id: int | None = None) -> None:
    """Record ``slot`` as taken (with the run it queued, if any)."""
    conn.execute("INSERT INTO schedule_slots (slot, run_id, note) VALUES (%s, %s, %s)",
                 (slot, run_id, note))
