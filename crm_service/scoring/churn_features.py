"""SQL for churn features: per customer, as of a cut-off, computed in PostgreSQL.

They read the run session's ``run_occasions`` and ``run_refunds``, built in the snapshot of the
run's summary (:func:`crm_service.scoring.summary.collect_occasions`: one row per customer and
day with paid orders, their amount, channel and the gap since the customer's previous
occasion; refunded orders per customer and day). Only
:class:`crm_service.scoring.session.LocalRunSession` calls them.
Each cut-off's features are one GROUP BY over that table, read into numpy as packed float4
columns (no customer ids enter Python). Definitions follow DESIGN.md §2: paid orders of one
local day are one occasion.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from crm_service.scoring.inputs import RAW_CHURN as RAW

_FEATURES = """
CREATE TEMP TABLE run_features AS
WITH f AS (
    SELECT customer_id,
           count(*) FILTER (WHERE p) - 1                                    AS frequency,
           max(day) FILTER (WHERE p) - min(day) FILTER (WHERE p)            AS recency,
           {c}::date - min(day) FILTER (WHERE p)                            AS t,
           stddev_samp(gap) FILTER (WHERE p)                                AS std_interval,
           max(gap) FILTER (WHERE p AND (next_day IS NULL OR next_day > {c})) AS last_interval,
           max(gap) FILTER (WHERE p)                                        AS max_interval,
           count(*) FILTER (WHERE p AND day > {c}::date - 30)               AS occasions_30,
           count(*) FILTER (WHERE p AND day > {c}::date - 90)               AS occasions_90,
           count(*) FILTER (WHERE p AND day > {c}::date - 180)              AS occasions_180,
           coalesce(sum(amount) FILTER (WHERE p AND day > {c}::date - 30), 0)  AS spend_30,
           coalesce(sum(amount) FILTER (WHERE p AND day > {c}::date - 90), 0)  AS spend_90,
           coalesce(sum(amount) FILTER (WHERE p AND day > {c}::date - 180), 0) AS spend_180,
           coalesce(sum(amount) FILTER (WHERE p AND day > {c}::date - 180
                                          AND day <= {c}::date - 90), 0)    AS spend_prev_90,
           sum(amount) FILTER (WHERE p)                                     AS historic_spend,
           count(DISTINCT channel) FILTER (WHERE p)                         AS channels,
           avg((channel = first_channel)::int) FILTER (WHERE p)             AS first_channel_share,
           sum(paid_orders) FILTER (WHERE p)                                AS paid_orders,
           count(*) FILTER (WHERE p AND day > {c}::date - 365)              AS occasions_365,
           coalesce(sum(amount) FILTER (WHERE p AND day > {c}::date - 365), 0) AS spend_365,
           count(DISTINCT date_trunc('month', day)) FILTER (WHERE p)        AS active_months,
           sum(amount) FILTER (WHERE p AND gap IS NULL)                     AS first_spend,
           count(*) FILTER (WHERE day > {c}
                              AND day <= {c}::date + {h})                   AS future
    FROM (SELECT *, day <= {c} AS p FROM {occasions}) o
    GROUP BY customer_id
    HAVING count(*) FILTER (WHERE p) > 0
),
r AS (
    SELECT customer_id, sum(refunded_orders) AS refunded_orders FROM {refunds}
    WHERE day <= {c} GROUP BY customer_id
)
SELECT {k} AS k, f.*,
       coalesce(r.refunded_orders, 0)::float8 / (f.paid_orders + coalesce(r.refunded_orders, 0))
           AS refund_share
FROM f LEFT JOIN r USING (customer_id) {join}
"""


def make_sample(conn: psycopg.Connection, share: float) -> None:
    """Keep a fixed pseudo-random ``share`` of the customers in ``run_*_sample`` tables.

    The sample is by a hash of the customer id, so the same customers at every cut-off.
    """
    keep = sql.SQL("WHERE (hashtext(customer_id) & 65535) < {}").format(
        sql.Literal(int(share * 65536) + 1))
    for table in ("run_occasions", "run_refunds"):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(
            sql.Identifier(table + "_sample")))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {} {}").format(
            sql.Identifier(table + "_sample"), sql.Identifier(table), keep))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table + "_sample")))


def load_raw(conn: psycopg.Connection, cutoff: date, horizon_days: int, *,
             summary_order: bool = False, sampled: bool = False,
             chunk: int = 500_000) -> NDArray[Any]:
    """Per-customer raw aggregates (columns :data:`RAW`) as of ``cutoff``.

    With ``summary_order`` the rows are the customers of the session's ``run_summary`` in its
    order (the cut-off must then be the summary's ``as_of``); otherwise the customers who had
    bought by ``cutoff``, in no particular order; with ``sampled``, only those kept by
    :func:`make_sample`. Returns a float32 array (rows x columns); NaN where a value is
    undefined (e.g. interval statistics without repeat purchases).
    """
    conn.execute("DROP TABLE IF EXISTS pg_temp.run_features")
    k = sql.SQL("s.i" if summary_order else "(row_number() OVER () - 1)::int")
    join = sql.SQL("JOIN run_summary s USING (customer_id)" if summary_order else "")
    suffix = "_sample" if sampled and not summary_order else ""
    conn.execute(sql.SQL(_FEATURES).format(
        c=sql.Literal(cutoff), h=sql.Literal(horizon_days), k=k, join=join,
        occasions=sql.Identifier("run_occasions" + suffix),
        refunds=sql.Identifier("run_refunds" + suffix)))
    n = conn.execute("SELECT count(*) FROM run_features").fetchone()
    rows = int(n[0]) if n else 0
    if summary_order:
        expected = conn.execute("SELECT count(customer_id) FROM run_summary").fetchone()
        if not expected or int(expected[0]) != rows:
            raise RuntimeError(f"churn features cover {rows} customers, the run's summary "
                               f"{expected[0] if expected else 0}: the occasion and summary "
                               "tables are out of step")
    packed = sql.SQL(" || ").join(
        [sql.SQL("int4send(k)")] + [sql.SQL("float4send(coalesce({}::float4, 'NaN'))").format(
            sql.Identifier(c.lower())) for c in RAW])
    dtype = np.dtype([("k", ">i4")] + [(c, ">f4") for c in RAW])
    out = np.empty((rows, len(RAW)), dtype=np.float32)
    with conn.cursor(binary=True) as cur:
        for lo in range(0, rows, chunk):
            row = cur.execute(sql.SQL("SELECT string_agg({}, ''::bytea) FROM run_features"
                                      " WHERE k >= %s AND k < %s").format(packed),
                              (lo, lo + chunk)).fetchone()
            part = np.frombuffer(row[0] if row and row[0] else b"", dtype=dtype)
            for j, c in enumerate(RAW):
                out[part["k"], j] = part[c]
    conn.execute("DROP TABLE IF EXISTS pg_temp.run_features")
    return out


