"""Lifecycle events: the outbox written when a run is published, read as a feed.

Types (DESIGN.md §5, issue 6): ``tier.changed`` (from, to), ``vip.entered``, ``vip.lost``,
``dormant.entered`` (with the value segment, so a VIP win-back can fire), ``churn_risk.raised``
(the band went up), and later ``customer.erased``. Events of a run are inserted in its publishing
transaction (:mod:`crm_service.storage.publishing`), against the run that was live until then; the
first run of a database emits none.

The feed pages by event id. Publishing holds a lock on ``scoring_state`` while it writes, so ids
become visible in increasing order and a reader that resumes after the last id it saw never
skips an event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_service.errors import ValidationError
from crm_service.storage.events import events_after
from crm_service.vocabulary import EVENT_TYPES

if TYPE_CHECKING:
    import psycopg

MAX_LIMIT = 1000


def parse_cursor(cursor: str | None) -> int:
    """The event id a cursor stands for (0: from the start)."""
    if cursor is None or cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
        raise ValidationError("after: a cursor from next_cursor (digits), or empty for the start")
    return int(cursor)


def parse_types(text: str | None) -> list[str] | None:
    """``tier.changed,vip.entered`` → list; None for all types."""
    if not text:
        return None
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown or not wanted:
        raise ValidationError(f"types: unknown {', '.join(unknown) or '(empty)'}; "
                              f"known: {', '.join(EVENT_TYPES)}")
    return wanted


def feed(conn: psycopg.Connection, *, after: int = 0, types: list[str] | None = None,
         limit: int = 100) -> dict[str, Any]:
    """Events with id > ``after`` in id order, and the cursor to resume from.

    ``next_cursor`` is always set (the last id returned, or ``after`` when there is nothing
    new), so a poller stores it and asks again later.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: 1-{MAX_LIMIT}")
    rows = events_after(conn, after, types, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"id": str(e.id), "type": e.type, "customer_id": e.customer_id,
              "run_id": e.run_id, "occurred_at": e.created_at.isoformat(), "data": e.data}
             for e in rows]
    last = rows[-1].id if rows else after
    return {"events": items, "next_cursor": str(last), "has_more": more}
