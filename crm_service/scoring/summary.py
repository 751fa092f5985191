"""SQL for a run's inputs: purchase occasions, the per-customer summary, the live run's tiers.

Purchase occasions (DESIGN.md §2): a customer's paid orders on one calendar day in the reporting
zone are one occasion, their amounts summed; cancelled and refunded orders do not count. Only
orders up to the end of ``as_of`` (local) are seen.

Everything lands in temporary tables of the run's session, whose names and lifetime
:class:`crm_service.scoring.session.LocalRunSession` owns: row ``i`` of ``run_summary`` is
customer ``i`` in id order, so arrays computed in numpy come back by index and customer ids
never enter Python.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from crm_service.scoring.inputs import RFM, PreviousTiers, Summary
from models.segments import TIERS

# Occasions (customer, day) up to as_of with the gap since the customer's previous occasion
# (NULL for the first), the day of the next, and the channel of the first. The window reuses
# the GROUP BY's (customer, day) order: no second sort of two million rows.
_OCCASIONS_FROM_ORDERS = """
SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, sum(amount) AS amount,
       count(*) AS paid_orders, min(channel) AS channel
FROM orders
WHERE status = 'paid' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
GROUP BY customer_id, day
"""

_OCCASIONS = """
CREATE TEMP TABLE run_occasions AS
SELECT customer_id, day, amount, paid_orders, channel,
       row_number() OVER w          AS k,
       day - lag(day) OVER w        AS gap,
       lead(day) OVER w             AS next_day,
       first_value(channel) OVER w  AS first_channel
FROM ({occasions}) days
WINDOW w AS (PARTITION BY customer_id ORDER BY day)
"""

# Refunded orders per customer and day (for the churn features' refund share).
_REFUNDS = """
CREATE TEMP TABLE run_refunds AS
SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, count(*) AS refunded_orders
FROM orders
WHERE status = 'refunded' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
GROUP BY customer_id, day
"""

# One pass over the occasions yields, per customer, the summary as of `as_of` and as of the
# backtest's calibration end, and per day the repeat occasions and first purchases. The
# occasions come from run_occasions when the churn stage built it (one aggregation of the
# orders instead of two), else straight from the orders.
_NUMBERED = """
SELECT customer_id, day, amount, row_number() OVER (PARTITION BY customer_id ORDER BY day) AS k
FROM ({occasions}) occasions
"""

_SUMMARY = """
CREATE TEMP TABLE run_summary AS
WITH numbered AS ({numbered})
SELECT (row_number() OVER (ORDER BY customer_id NULLS LAST) - 1)::int AS i,
       customer_id, day,
       (count(*) - 1)::int                                   AS frequency,
       max(day) - min(day)                                   AS recency,
       {as_of}::date - min(day)                              AS t,
       round(coalesce(avg(amount) FILTER (WHERE k > 1), 0), 2) AS monetary_value,
       sum(amount)                                           AS historic_spend,
       min(day)                                              AS first_purchase,
       max(day)                                              AS last_purchase,
       (count(*) FILTER (WHERE day <= {cal_end}) - 1)::int   AS cal_frequency,
       coalesce(max(day) FILTER (WHERE day <= {cal_end}) - min(day), -1) AS cal_recency,
       (count(*) FILTER (WHERE k > 1))::int                  AS repeats,
       (count(*) FILTER (WHERE k = 1))::int                  AS firsts
FROM numbered
GROUP BY GROUPING SETS ((customer_id), (day))
"""

# The numeric columns in id order as one packed big-endian bytea: a million customers leave
# the database in well under a second, where a CSV of the same took four.
_PACKED = """
SELECT string_agg(int4send(i) || int4send(frequency) || int4send(recency) || int4send(t)
                  || float8send(monetary_value::float8) || float8send(historic_spend::float8)
                  || int4send(cal_frequency) || int4send(cal_recency), ''::bytea)
FROM run_summary WHERE customer_id IS NOT NULL
"""
_PACKED_DTYPE = np.dtype([("i", ">i4"), ("frequency", ">i4"), ("recency", ">i4"),
                          ("t", ">i4"), ("monetary_value", ">f8"), ("historic_spend", ">f8"),
                          ("cal_frequency", ">i4"), ("cal_recency", ">i4")])
# Sorts and hashes of a million rows fit in memory with this; the default spills to disk.
RUN_WORK_MEM = "128MB"


def _bind(query: str, **values: Any) -> sql.Composed:
    return sql.SQL(query).format(**{k: sql.Literal(v) for k, v in values.items()})


def _from_orders(timezone: str, as_of: date) -> sql.Composable:
    return _bind(_OCCASIONS_FROM_ORDERS, tz=timezone, as_of=as_of)


def first_purchase_day(conn: psycopg.Connection, as_of: date, timezone: str) -> date | None:
    """The local day of the first paid order up to ``as_of`` (None: no paid order)."""
    row = conn.execute(_bind(
        "SELECT (min(ordered_at) AT TIME ZONE {tz})::date FROM orders WHERE status = 'paid'"
        " AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}",
        tz=timezone, as_of=as_of)).fetchone()
    return row[0] if row else None


def collect_occasions(conn: psycopg.Connection, as_of: date, timezone: str) -> None:
    """Build ``run_occasions`` and ``run_refunds`` (the churn features' input)."""
    conn.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
    conn.execute(sql.SQL(_OCCASIONS).format(occasions=_from_orders(timezone, as_of)))
    conn.execute(_bind(_REFUNDS, tz=timezone, as_of=as_of))
    conn.execute("ANALYZE run_occasions")  # temporary tables are never auto-analysed
    conn.execute("ANALYZE run_refunds")


def load_summary(conn: psycopg.Connection, as_of: date, timezone: str, *,
                 first_day: date | None, from_occasions: bool = False,
                 holdout_share: float = 0.25) -> Summary:
    """Compute the summary in PostgreSQL (``run_summary``) and read it.

    The calibration end is ``as_of`` minus ``holdout_share`` of the span from the first
    purchase ``first_day`` (at least one day). With ``from_occasions`` it reads
    ``run_occasions`` (built first by :func:`collect_occasions`) instead of the orders.
    """
    span = (as_of - first_day).days if first_day else 0
    cal_end = as_of - timedelta(days=max(int(span * holdout_share), 1))
    conn.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
    numbered = (sql.SQL("SELECT customer_id, day, amount, k FROM run_occasions")
                if from_occasions else
                sql.SQL(_NUMBERED).format(occasions=_from_orders(timezone, as_of)))
    conn.execute(sql.SQL(_SUMMARY).format(
        numbered=numbered, as_of=sql.Literal(as_of), cal_end=sql.Literal(cal_end)))
    conn.execute("ANALYZE run_summary")
    with conn.cursor(binary=True) as cur:
        packed = cur.execute(_PACKED).fetchone()
        daily = cur.execute("SELECT day, repeats, firsts FROM run_summary"
                            " WHERE customer_id IS NULL ORDER BY day").fetchall()
    unordered = np.frombuffer(packed[0] if packed and packed[0] else b"", dtype=_PACKED_DTYPE)
    rows = np.empty_like(unordered)  # rows in the order of i (the scan's order is not fixed)
    rows[unordered["i"]] = unordered

    def col(name: str) -> NDArray[np.float64]:
        return rows[name].astype(np.float64)

    x, t_x, big_t = col("frequency"), col("recency"), col("t")
    cal_x, cal_t_x = col("cal_frequency"), col("cal_recency")
    in_cal = cal_x >= 0
    return Summary(
        frequency=x, recency=t_x, T=big_t, as_of=as_of,
        monetary_value=col("monetary_value"), historic_spend=col("historic_spend"),
        calibration_end=cal_end, in_calibration=in_cal,
        calibration=RFM(cal_x[in_cal], cal_t_x[in_cal],
                        big_t[in_cal] - (as_of - cal_end).days),
        days=[r[0] for r in daily], repeats=np.array([r[1] for r in daily], dtype=float),
        firsts=np.array([r[2] for r in daily], dtype=float),
    )


def live_partition(conn: psycopg.Connection) -> tuple[int, str] | None:
    """The live run's id and the name of its score partition, or None before the first run."""
    row = conn.execute("SELECT active_run_id FROM scoring_state").fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0]), partition_name(int(row[0]))


def partition_name(run_id: int) -> str:
    """The name of a run's partition of ``customer_scores``."""
    return f"customer_scores_r{int(run_id)}"


def previous_tiers(conn: psycopg.Connection, n: int, as_of: date) -> PreviousTiers:
    """The live run's tiers per row of ``run_summary`` (``n`` customers).

    Reads only the live run's partition, so the cost does not grow with the runs kept.
    """
    live = live_partition(conn)
    if live is None:
        return PreviousTiers.none(n)
    codes, since = np.full(n, -1, dtype=np.int8), np.zeros(n)
    with conn.cursor(binary=True) as cur:
        row = cur.execute(sql.SQL(
            "SELECT string_agg(int4send(s.i) || int4send(array_position(%s::text[], p.tier) - 1)"
            "   || int4send(coalesce(%s::date - p.tier_since, 0)), ''::bytea)"
            " FROM run_summary s JOIN {part} p ON p.customer_id = s.customer_id"
            " AND p.tier IS NOT NULL").format(part=sql.Identifier(live[1])),
            (list(TIERS), as_of)).fetchone()
    rows = np.frombuffer(row[0] if row and row[0] else b"",
                         dtype=[("i", ">i4"), ("code", ">i4"), ("since", ">i4")])
    codes[rows["i"]] = rows["code"]
    since[rows["i"]] = rows["since"]
    return PreviousTiers(codes, since, True)
