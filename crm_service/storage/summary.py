"""SQL for a run's inputs: the purchase occasions of the base, and the live run's tiers.

Purchase occasions (DESIGN.md §2): a customer's paid orders on one calendar day in the reporting
zone are one occasion, their amounts summed; cancelled and refunded orders do not count. Only
orders up to the end of ``as_of`` (local) are seen.

One aggregation of the orders lands in the run session's temporary ``run_occasions``, whose
``i`` numbers the customers in id order (the summary's row order); ``run_customers`` maps ``i``
back to the id, so arrays computed in numpy come back by index and customer ids never enter
Python. The occasions leave PostgreSQL once, packed in binary, and
:mod:`crm_service.scoring.occasions` computes the summary and the churn aggregates from them.
The temporary tables' names and lifetime belong to
:class:`crm_service.storage.run_session.LocalRunSession`.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from crm_service.scoring.inputs import PreviousTiers
from crm_service.scoring.occasions import EPOCH, Occasions
from crm_service.vocabulary import TIERS

# The (customer, day) aggregation and both windows share one sort of the occasions: the
# customer numbering's order (customer_id) is a prefix of the windows' (customer_id, day).
_OCCASIONS = """
CREATE TEMP TABLE run_occasions AS
SELECT (dense_rank() OVER (ORDER BY customer_id) - 1)::int AS i,
       row_number() OVER (PARTITION BY customer_id ORDER BY day) AS k,
       customer_id, day, amount, paid_orders, channel
FROM (
    SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, sum(amount) AS amount,
           count(*)::int AS paid_orders, min(channel) AS channel
    FROM orders
    WHERE status = 'paid' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
    GROUP BY customer_id, day
) days
"""

# Occasion columns as packed big-endian binary (no customer ids: `i` stands for them).
_OCCASION_COLUMNS = (("int4send(i)", ">i4"), ("int4send(day - {epoch})", ">i4"),
                     ("int8send((amount * 100)::int8)", ">i8"), ("int4send(paid_orders)", ">i4"),
                     ("int4send(hashtext(channel))", ">i4"),
                     ("int4send(hashtext(customer_id) & 65535)", ">i4"))

# Refunded orders per customer and day (the churn features' refund share).
_REFUNDS = """
SELECT c.i, (o.ordered_at AT TIME ZONE {tz})::date - {epoch} AS day, count(*)::int AS n
FROM orders o JOIN run_customers c USING (customer_id)
WHERE o.status = 'refunded' AND o.ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
GROUP BY 1, 2
"""
_REFUND_COLUMNS = (("int4send(i)", ">i4"), ("int4send(day)", ">i4"), ("int4send(n)", ">i4"))

# Rows leave PostgreSQL as one packed bytea per chunk of customers: a string_agg of fixed-width
# binary values is four times faster than a binary COPY, which psycopg hands over row by row.
_PACKED_ROWS_PER_CHUNK = 4_000_000

# Sorts and hashes of a million rows fit in memory with this; the default spills to disk.
RUN_WORK_MEM = "128MB"


def _bind(query: str, **values: Any) -> sql.Composed:
    return sql.SQL(query).format(**{k: sql.Literal(v) for k, v in values.items()})


def read_packed(cur: psycopg.Cursor, source: sql.Composable,
                columns: tuple[tuple[str, str], ...], *, customers: int, rows: int,
                **values: Any) -> NDArray[Any]:
    """Rows of ``source`` (which has a customer index ``i``) as a structured array.

    ``columns`` pairs a SQL expression yielding fixed-width binary (``int4send(x)``) with its
    big-endian numpy type; ``values`` are bound into the expressions and ``source``. The rows
    come in chunks of customers, about :data:`_PACKED_ROWS_PER_CHUNK` rows each, so no bytea
    nears PostgreSQL's 1 GB limit.
    """
    dtype = np.dtype([(f"v{k}", t) for k, (_, t) in enumerate(columns)])
    packed = sql.SQL(" || ").join(
        sql.SQL(expr).format(**{k: sql.Literal(v) for k, v in values.items()})
        for expr, _ in columns)
    step = max(1, -(-customers * _PACKED_ROWS_PER_CHUNK // max(rows, 1)))
    parts = []
    for lo in range(0, max(customers, 1), step):
        row = cur.execute(sql.SQL("SELECT string_agg({packed}, ''::bytea) FROM ({source}) r"
                                  " WHERE i >= %s AND i < %s").format(
            packed=packed, source=source), (lo, lo + step)).fetchone()
        parts.append(np.frombuffer(row[0] if row and row[0] else b"", dtype=dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def collect_occasions(conn: psycopg.Connection, as_of: date, timezone: str
                      ) -> tuple[int, int]:
    """Build ``run_occasions`` and ``run_customers``; return (customers, occasions)."""
    conn.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
    rows = conn.execute(_bind(_OCCASIONS, tz=timezone, as_of=as_of)).rowcount
    customers = conn.execute("CREATE TEMP TABLE run_customers AS"
                             " SELECT i, customer_id FROM run_occasions WHERE k = 1").rowcount
    conn.execute("ANALYZE run_customers")  # temporary tables are never auto-analysed
    return max(customers, 0), max(rows, 0)


def read_occasions(conn: psycopg.Connection, customers: int, rows: int) -> Occasions:
    """The session's occasions as arrays (without refunds: see :func:`read_refunds`)."""
    with conn.cursor(binary=True) as cur:
        a = read_packed(cur, sql.SQL("SELECT * FROM run_occasions"), _OCCASION_COLUMNS,
                        customers=customers, rows=rows, epoch=EPOCH)
    empty = np.empty(0, dtype=np.int32)
    return Occasions(customer=a["v0"].astype(np.int32), day=a["v1"].astype(np.int32),
                     cents=a["v2"].astype(np.int64), paid_orders=a["v3"].astype(np.int32),
                     channel=a["v4"].astype(np.int32), bucket=a["v5"].astype(np.int32),
                     customers=customers, refund_customer=empty, refund_day=empty,
                     refund_orders=empty)


def read_refunds(conn: psycopg.Connection, occ: Occasions, as_of: date, timezone: str) -> None:
    """Add the refunded orders per customer and day to ``occ``."""
    with conn.cursor(binary=True) as cur:
        a = read_packed(cur, _bind(_REFUNDS, tz=timezone, as_of=as_of, epoch=EPOCH),
                        _REFUND_COLUMNS, customers=occ.customers, rows=occ.customer.size)
    occ.refund_customer = a["v0"].astype(np.int32)
    occ.refund_day = a["v1"].astype(np.int32)
    occ.refund_orders = a["v2"].astype(np.int32)


def live_partition(conn: psycopg.Connection) -> tuple[int, str] | None:
    """The live run's id and the name of its score partition, or None when there is none."""
    row = conn.execute("SELECT active_run_id, to_regclass('customer_scores_r' || active_run_id)"
                       " IS NOT NULL FROM scoring_state").fetchone()
    if row is None or row[0] is None or not row[1]:
        return None  # no run yet, or (a migrated database) a live run without score rows
    return int(row[0]), partition_name(int(row[0]))


def partition_name(run_id: int) -> str:
    """The name of a run's partition of ``customer_scores``."""
    return f"customer_scores_r{int(run_id)}"


def previous_tiers(conn: psycopg.Connection, n: int, as_of: date) -> PreviousTiers:
    """The live run's tiers per customer of ``run_customers`` (``n`` customers).

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
            " FROM run_customers s JOIN {part} p ON p.customer_id = s.customer_id"
            " AND p.tier IS NOT NULL").format(part=sql.Identifier(live[1])),
            (list(TIERS), as_of)).fetchone()
    rows = np.frombuffer(row[0] if row and row[0] else b"",
                         dtype=[("i", ">i4"), ("code", ">i4"), ("since", ">i4")])
    codes[rows["i"]] = rows["code"]
    since[rows["i"]] = rows["since"]
    return PreviousTiers(codes, since, True)
