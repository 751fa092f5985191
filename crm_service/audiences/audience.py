"""Audiences: the live run's customers, filtered, paged or streamed (``GET /v1/customers``).

Filters: tier, value and RFM segment, churn risk, CLV range, P(alive), last purchase. Pages
follow a keyset cursor in customer id order; CSV streams the whole audience.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

from crm_service.errors import NotFoundError, ValidationError
from crm_service.storage import runs
from crm_service.storage.audiences import (
    COLUMNS,
    SORTS,
    AudienceFilter,
    audience_page,
    audience_stream,
)

if TYPE_CHECKING:
    import psycopg

MAX_LIMIT = 1000


def encode_cursor(run_id: int, customer_id: str, sort: str = "customer_id",
                  value: Any = None) -> str:
    """Opaque cursor: the run, the order, and the sort key and customer id of a page's end."""
    parts: list[Any] = [run_id, customer_id]
    if sort != "customer_id":
        parts += [sort, None if value is None else str(value)]
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, str, str | None]:
    """The (run id, customer id, sort, sort key as text) in a cursor.

    Raises
    ------
    ValidationError
        If the cursor was not made by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list) or len(parts) not in (2, 4):
            raise ValueError
        run_id, customer_id = parts[:2]
        sort, value = (parts[2], parts[3]) if len(parts) == 4 else ("customer_id", None)
        if not isinstance(run_id, int) or not isinstance(customer_id, str) \
                or sort not in SORTS or not (value is None or isinstance(value, str)):
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValidationError("cursor: not a cursor this API returned") from None
    return run_id, customer_id, sort, value


def _check_sort(sort: str) -> None:
    if sort not in SORTS:
        raise ValidationError(f"sort: one of {', '.join(SORTS)}")


def _live_run(conn: psycopg.Connection) -> tuple[int, date]:
    live = runs.live_run(conn)
    if live is None:
        raise NotFoundError("no scoring run has been published yet")
    return live.run_id, live.as_of


def page(conn: psycopg.Connection, filters: AudienceFilter, *, limit: int = 100,
         cursor: str | None = None, sort: str = "customer_id") -> dict[str, Any]:
    """One page in ``sort`` order, and the cursor of the next (None on the last page).

    A cursor belongs to the run that was live when the first page was read and to one order;
    once another run is published, or with another ``sort``, it is refused (the audience would
    mix two runs, or skip customers).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: 1-{MAX_LIMIT}")
    _check_sort(sort)
    run_id, as_of = _live_run(conn)
    after = None
    if cursor is not None:
        cursor_run, customer, cursor_sort, value = decode_cursor(cursor)
        after = (customer, value)
        if cursor_run != run_id:
            raise ValidationError(f"cursor: it belongs to run {cursor_run}, and run {run_id} "
                                  "is live now; start again without a cursor")
        if cursor_sort != sort:
            raise ValidationError(f"cursor: it was made for sort={cursor_sort}; pass the same "
                                  "sort, or start again without a cursor")
    rows = audience_page(conn, filters, sort, run_id, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [jsonable(dict(zip(COLUMNS, r, strict=False))) for r in rows]
    next_cursor = None
    if more and rows:
        next_cursor = encode_cursor(run_id, rows[-1][0], sort, rows[-1][-1])
    return {"run_id": run_id, "as_of": as_of.isoformat(), "sort": sort, "items": items,
            "next_cursor": next_cursor}


def stream_csv(conn: psycopg.Connection, filters: AudienceFilter, sort: str = "customer_id",
               batch: int = 10_000) -> Iterator[str]:
    """The whole audience as CSV text chunks (a server-side cursor: bounded memory)."""
    _check_sort(sort)
    run_id, _ = _live_run(conn)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    yield buf.getvalue()
    width = len(COLUMNS)
    for rows in audience_stream(conn, filters, sort, run_id, batch):
        buf.seek(0)
        buf.truncate()
        writer.writerows(r[:width] for r in rows)
        yield buf.getvalue()


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with dates as ISO text and numerics as floats (JSON-ready)."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif v is not None and not isinstance(v, (str, int, float, bool)):
            v = float(v)  # numeric
        out[k] = v
    return out
