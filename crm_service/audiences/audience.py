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


# Orders of an audience: column -> SQL type of its key. Floats are never NULL in a published
# run except churn_probability of a run without churn; coalesce keeps keyset comparisons total.
_SORT_KEYS = {"customer_id": None, "clv_12m": "float8", "churn_probability": "float8",
              "p_alive": "float8", "historic_spend": "numeric", "last_purchase": "date"}
SORTS = tuple(["customer_id"] + [f"{sign}{name}" for name in _SORT_KEYS if name != "customer_id"
                                 for sign in ("", "-")])


def _order(sort: str) -> tuple[str, str | None, bool]:
    """(key SQL, cast, descending) of a sort name from :data:`SORTS`."""
    if sort not in SORTS:
        raise ValidationError(f"sort: one of {', '.join(SORTS)}")
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    cast = _SORT_KEYS[name]
    if cast == "float8":
        return f"coalesce(s.{name}, '-Infinity'::float8)", cast, descending
    return f"s.{name}", cast, descending


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


def _live_run(conn: psycopg.Connection) -> tuple[int, date]:
    row = conn.execute("SELECT r.id, r.as_of FROM scoring_state st"
                       " JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
    if row is None:
        raise NotFoundError("no scoring run has been published yet")
    return int(row[0]), row[1]


def _select(where: str, sort: str = "customer_id", *, after: bool = False) -> str:
    """The audience query in ``sort`` order; with ``after``, only rows past the cursor."""
    cols = ", ".join(f"s.{c}" for c in COLUMNS)
    key, cast, desc = _order(sort)
    direction = "DESC" if desc else "ASC"
    past = "<" if desc else ">"
    if sort == "customer_id":
        keyset = f"s.customer_id {past} %(after)s"
        order = "s.customer_id"
    else:
        keyset = f"({key}, s.customer_id) {past} (%(value)s::{cast}, %(after)s)"
        order = f"{key} {direction}, s.customer_id {direction}"
    if not after:
        keyset = "true"
    return (f"SELECT {cols}, {key} FROM customer_scores s WHERE s.run_id = %(run_id)s"
            f" AND {where} AND {keyset} ORDER BY {order}")


def page(conn: psycopg.Connection, filters: AudienceFilter, *, limit: int = 100,
         cursor: str | None = None, sort: str = "customer_id") -> dict[str, Any]:
    """One page in ``sort`` order, and the cursor of the next (None on the last page).

    A cursor belongs to the run that was live when the first page was read and to one order;
    once another run is published, or with another ``sort``, it is refused (the audience would
    mix two runs, or skip customers).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: 1-{MAX_LIMIT}")
    _order(sort)
    run_id, as_of = _live_run(conn)
    after, value = "", None
    if cursor is not None:
        cursor_run, after, cursor_sort, value = decode_cursor(cursor)
        if cursor_run != run_id:
            raise ValidationError(f"cursor: it belongs to run {cursor_run}, and run {run_id} "
                                  "is live now; start again without a cursor")
        if cursor_sort != sort:
            raise ValidationError(f"cursor: it was made for sort={cursor_sort}; pass the same "
                                  "sort, or start again without a cursor")
    where, params = filters.where()
    rows = conn.execute(_select(where, sort, after=cursor is not None) + " LIMIT %(limit)s",
                        {**params, "run_id": run_id, "after": after, "value": value,
                         "limit": limit + 1}).fetchall()
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
    _order(sort)
    run_id, _ = _live_run(conn)
    where, params = filters.where()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    yield buf.getvalue()
    width = len(COLUMNS)
    with conn.transaction(), conn.cursor(name="audience") as cur:
        cur.itersize = batch
        cur.execute(_select(where, sort), {**params, "run_id": run_id})
        while rows := cur.fetchmany(batch):
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
