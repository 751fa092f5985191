"""SQL for a run's inputs: the purchase occasions of the base, and the live run's tiers.

Purchase occasions (DESIGN.md §2): a customer's paid orders on one calendar day in the reporting
zone are one occasion, their amounts summed; cancelled and refunded orders do not count. Only
orders up to the end of ``as_of`` (local) are seen.

One aggregation of the orders lands in the run session's temporary ``run_occasions``, whose
``i`` numbers the customers in id order (the summary's row order); ``run_customers`` maps ``i``
back to the id, so arrays computed in numpy come back by index and customer ids never enter
Python. The occasions leave PostgreSQL once, by binary COPY, and
:mod:`crm_service.scoring.occasions` computes the summary and the churn aggregates from them.
The temporary tables' names and lifetime belong to
:class:`crm_service.scoring.session.LocalRunSession`.
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
from models.segments import TIERS

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

_READ_OCCASIONS = """
COPY (SELECT i, day - {epoch}, (amount * 100)::int8, paid_orders, hashtext(channel),
             hashtext(customer_id) & 65535
      FROM run_occasions) TO STDOUT (FORMAT binary)
"""

# Refunded orders per customer and day (the churn features' refund share).
_READ_REFUNDS = """
COPY (SELECT c.i, (o.ordered_at AT TIME ZONE {tz})::date - {epoch}, count(*)::int
      FROM orders o JOIN run_customers c USING (customer_id)
      WHERE o.status = 'refunded'
        AND o.ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
      GROUP BY 1, 2) TO STDOUT (FORMAT binary)
"""

# Sorts and hashes of a million rows fit in memory with this; the default spills to disk.
RUN_WORK_MEM = "128MB"


def _bind(query: str, **values: Any) -> sql.Composed:
    return sql.SQL(query).format(**{k: sql.Literal(v) for k, v in values.items()})


def read_binary_copy(cur: psycopg.Cursor, query: sql.Composed,
                     types: list[str]) -> NDArray[Any]:
    """Rows of a ``COPY ... TO STDOUT (FORMAT binary)`` of fixed-width, non-null columns.

    ``types`` are the columns' big-endian numpy types (``">i4"``, ``">i8"``, ``">f8"``). Every
    tuple then has the same width, so the stream is parsed as a structured array, chunk by
    chunk, with no Python per row.
    """
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for k, t in enumerate(types):
        fields += [(f"l{k}", ">i4"), (f"v{k}", t)]
    dtype = np.dtype(fields)
    parts, buffer, header = [], bytearray(), True
    with cur.copy(query) as copy:
        for chunk in copy:
            buffer += chunk
            if header:
                if len(buffer) < 19:
                    continue
                extension = int.from_bytes(buffer[15:19], "big")
                del buffer[:19 + extension]
                header = False
            whole = len(buffer) // dtype.itemsize * dtype.itemsize
            if whole:
                parts.append(np.frombuffer(bytes(buffer[:whole]), dtype=dtype))
                del buffer[:whole]
    if buffer not in (bytearray(b"\xff\xff"), bytearray()):
        raise RuntimeError("unexpected data in a binary COPY of fixed-width columns")
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def collect_occasions(conn: psycopg.Connection, as_of: date, timezone: str) -> int:
    """Build ``run_occasions`` and ``run_customers``; return the number of customers."""
    conn.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
    conn.execute(_bind(_OCCASIONS, tz=timezone, as_of=as_of))
    conn.execute("CREATE TEMP TABLE run_customers AS"
                 " SELECT i, customer_id FROM run_occasions WHERE k = 1")
    conn.execute("ANALYZE run_customers")  # temporary tables are never auto-analysed
    row = conn.execute("SELECT count(*) FROM run_customers").fetchone()
    return int(row[0]) if row else 0


def read_occasions(conn: psycopg.Connection, customers: int) -> Occasions:
    """The session's occasions as arrays (without refunds: see :func:`read_refunds`)."""
    with conn.cursor(binary=True) as cur:
        rows = read_binary_copy(cur, _bind(_READ_OCCASIONS, epoch=EPOCH),
                                [">i4", ">i4", ">i8", ">i4", ">i4", ">i4"])
    empty = np.empty(0, dtype=np.int32)
    return Occasions(customer=rows["v0"].astype(np.int32), day=rows["v1"].astype(np.int32),
                     cents=rows["v2"].astype(np.int64), paid_orders=rows["v3"].astype(np.int32),
                     channel=rows["v4"].astype(np.int32), bucket=rows["v5"].astype(np.int32),
                     customers=customers, refund_customer=empty, refund_day=empty,
                     refund_orders=empty)


def read_refunds(conn: psycopg.Connection, occ: Occasions, as_of: date, timezone: str) -> None:
    """Add the refunded orders per customer and day to ``occ``."""
    with conn.cursor(binary=True) as cur:
        rows = read_binary_copy(cur, _bind(_READ_REFUNDS, tz=timezone, as_of=as_of,
                                           epoch=EPOCH), [">i4", ">i4", ">i4"])
    occ.refund_customer = rows["v0"].astype(np.int32)
    occ.refund_day = rows["v1"].astype(np.int32)
    occ.refund_orders = rows["v2"].astype(np.int32)


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
