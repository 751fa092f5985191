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
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from crm_service.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    import psycopg

MAX_LIMIT = 1000
COLUMNS = ("customer_id", "tier", "tier_since", "value_segment", "rfm_segment",
           "recommended_action", "churn_probability", "churn_risk", "clv_12m", "p_alive",
           "expected_purchases_90", "frequency", "last_purchase", "historic_spend")


@dataclass(frozen=True)
class AudienceFilter:
    """Filters of an audience; None means no filter."""

    tier: str | None = None
    value_segment: str | None = None
    rfm_segment: str | None = None
    churn_risk: str | None = None
    min_clv: float | None = None
    max_clv: float | None = None
    min_p_alive: float | None = None
    last_purchase_before: date | None = None
    last_purchase_after: date | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """SQL conditions on ``s`` (customer_scores) and their parameters."""
        conds, params = [], {}
        for name in ("tier", "value_segment", "rfm_segment", "churn_risk"):
            value = getattr(self, name)
            if value is not None:
                conds.append(f"s.{name} = %({name})s")
                params[name] = value
        for name, sql in (("min_clv", "s.clv_12m >= %(min_clv)s"),
                          ("max_clv", "s.clv_12m <= %(max_clv)s"),
                          ("min_p_alive", "s.p_alive >= %(min_p_alive)s"),
                          ("last_purchase_before", "s.last_purchase < %(last_purchase_before)s"),
                          ("last_purchase_after", "s.last_purchase > %(last_purchase_after)s")):
            value = getattr(self, name)
            if value is not None:
                conds.append(sql)
                params[name] = value
        return (" AND ".join(conds) or "true"), params


def encode_cursor(run_id: int, customer_id: str) -> str:
    """Opaque cursor: the run and the last customer id of a page."""
    raw = json.dumps([run_id, customer_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (run id, customer id) in a cursor.

    Raises
    ------
    ValidationError
        If the cursor was not made by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        run_id, customer_id = json.loads(raw)
        if not isinstance(run_id, int) or not isinstance(customer_id, str):
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValidationError("cursor: not a cursor this API returned") from None
    return run_id, customer_id


def _live_run(conn: psycopg.Connection) -> tuple[int, date]:
    row = conn.execute("SELECT r.id, r.as_of FROM scoring_state st"
                       " JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
    if row is None:
        raise NotFoundError("no scoring run has been published yet")
    return int(row[0]), row[1]


def _select(where: str) -> str:
    cols = ", ".join(f"s.{c}" for c in COLUMNS)
    return (f"SELECT {cols} FROM customer_scores s WHERE s.run_id = %(run_id)s AND {where}"
            " AND s.customer_id > %(after)s ORDER BY s.customer_id")


def page(conn: psycopg.Connection, filters: AudienceFilter, *, limit: int = 100,
         cursor: str | None = None) -> dict[str, Any]:
    """One page in customer id order, and the cursor of the next (None on the last page).

    A cursor belongs to the run that was live when the first page was read; once another run
    is published it is refused (the audience would mix two runs).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: 1-{MAX_LIMIT}")
    run_id, as_of = _live_run(conn)
    after = ""
    if cursor is not None:
        cursor_run, after = decode_cursor(cursor)
        if cursor_run != run_id:
            raise ValidationError(f"cursor: it belongs to run {cursor_run}, and run {run_id} "
                                  "is live now; start again without a cursor")
    where, params = filters.where()
    rows = conn.execute(_select(where) + " LIMIT %(limit)s",
                        {**params, "run_id": run_id, "after": after,
                         "limit": limit + 1}).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_jsonable(dict(zip(COLUMNS, r, strict=True))) for r in rows]
    return {"run_id": run_id, "as_of": as_of.isoformat(), "items": items,
            "next_cursor": encode_cursor(run_id, rows[-1][0]) if more and rows else None}


def stream_csv(conn: psycopg.Connection, filters: AudienceFilter,
               batch: int = 10_000) -> Iterator[str]:
    """The whole audience as CSV text chunks (a server-side cursor: bounded memory)."""
    run_id, _ = _live_run(conn)
    where, params = filters.where()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    yield buf.getvalue()
    with conn.transaction(), conn.cursor(name="audience") as cur:
        cur.itersize = batch
        cur.execute(_select(where), {**params, "run_id": run_id, "after": ""})
        while rows := cur.fetchmany(batch):
            buf.seek(0)
            buf.truncate()
            writer.writerows(rows)
            yield buf.getvalue()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif v is not None and not isinstance(v, (str, int, float, bool)):
            v = float(v)  # numeric
        out[k] = v
    return out
