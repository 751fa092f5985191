"""Lifecycle events (SQL): reading the outbox in id order.

Events are written by the run's publishing transaction (:mod:`crm_service.storage.publishing`)
and by erasure; this module reads them back for the feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True)
class Event:
    """One stored lifecycle event."""

    id: int
    type: str
    customer_id: str | None
    run_id: int | None
    data: dict[str, Any]
    created_at: datetime


def events_after(conn: psycopg.Connection, after: int, types: list[str] | None,
                 limit: int) -> list[Event]:
    """Up to ``limit`` events with id > ``after`` (of ``types``, or all), in id order."""
    with conn.cursor(row_factory=class_row(Event)) as cur:
        return cur.execute(
            "SELECT id, type, customer_id, run_id, data, created_at FROM events"
            " WHERE id > %(after)s AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s))"
            " ORDER BY id LIMIT %(limit)s",
            {"after": after, "types": types, "limit": limit}).fetchall()
