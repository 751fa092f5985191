"""Audiences (SQL): the live run's customers filtered and ordered, a page or a stream.

Rows come back as plain tuples in :data:`COLUMNS` order (plus the sort key): an audience CSV of
a million customers is written straight from them, with no object per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from crm_service.storage.score_reads import MERGED_SQL

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
    if sort not in SORTS:  # the service refuses it first, with a 422
        raise ValueError(f"sort: one of {', '.join(SORTS)}")
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    cast = _SORT_KEYS[name]
    if cast == "float8":
        return f"coalesce(s.{name}, '-Infinity'::float8)", cast, descending
    return f"s.{name}", cast, descending


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
            f" AND {where} AND {keyset} AND NOT {MERGED_SQL} ORDER BY {order}")


def audience_page(conn: psycopg.Connection, filters: AudienceFilter, sort: str, run_id: int,
                  after: tuple[str, str | None] | None, limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` rows of run ``run_id`` in ``sort`` order, past ``after`` when given.

    ``after`` is the (customer id, sort key as text) of the previous page's last row.
    """
    where, params = filters.where()
    customer, value = after if after is not None else ("", None)
    return conn.execute(_select(where, sort, after=after is not None) + " LIMIT %(limit)s",
                        {**params, "run_id": run_id, "after": customer, "value": value,
                         "limit": limit}).fetchall()


def audience_stream(conn: psycopg.Connection, filters: AudienceFilter, sort: str, run_id: int,
                    batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """The whole audience in batches, from a server-side cursor (bounded memory)."""
    where, params = filters.where()
    with conn.transaction(), conn.cursor(name="audience") as cur:
        cur.itersize = batch
        cur.execute(_select(where, sort), {**params, "run_id": run_id})
        while rows := cur.fetchmany(batch):
            yield rows
