"""SQL for merging validated orders: COPY into a staging table, then upsert by (channel, order_id).

Everything happens in the caller's transaction, so a batch or a file lands whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import psycopg

from crm_service.staging import MergeResult

# (seq, (order_id, customer_id, channel, ordered_at ISO text, amount text, currency, status))
StagedOrder = tuple[int, tuple[str, str, str, str, str, str, str]]

_CREATE_STAGING = """
CREATE TEMP TABLE order_staging (
    seq         bigint NOT NULL,
    order_id    text NOT NULL,
    customer_id text NOT NULL,
    channel     text NOT NULL,
    ordered_at  timestamptz NOT NULL,
    amount      numeric(14, 2) NOT NULL,
    currency    char(3) NOT NULL,
    status      text NOT NULL,
    pass        integer NOT NULL DEFAULT 1
) ON COMMIT DROP
"""

_COPY_STAGING = (
    "COPY order_staging (seq, order_id, customer_id, channel, ordered_at, amount, currency, status)"
    " FROM STDIN"
)

# A key sent twice in one batch is merged in `pass` order: the n-th occurrence in pass n. One
# INSERT .. ON CONFLICT cannot touch the same row twice, and this keeps the sender's order.
_NUMBER_PASSES = """
UPDATE order_staging s SET pass = d.rn
FROM (
    SELECT seq, row_number() OVER (PARTITION BY channel, order_id ORDER BY seq) AS rn
    FROM order_staging
    WHERE (channel, order_id) IN (
        SELECT channel, order_id FROM order_staging GROUP BY 1, 2 HAVING count(*) > 1
    )
) d
WHERE s.seq = d.seq AND d.rn > 1
"""

_INSERT_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT DISTINCT s.customer_id FROM order_staging s
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
ON CONFLICT DO NOTHING
"""

# xmax = 0 on the returned row version means it was freshly inserted, not updated. An identical
# resend matches no row in the DO UPDATE's WHERE and is not returned at all: a duplicate.
_UPSERT = """
WITH up AS (
    INSERT INTO orders AS o
        (channel, order_id, customer_id, ordered_at, amount, currency, status)
    SELECT channel, order_id, customer_id, ordered_at, amount, currency, status
    FROM order_staging WHERE pass = %(pass)s
    ORDER BY channel, order_id
    ON CONFLICT (channel, order_id) DO UPDATE
        SET customer_id = EXCLUDED.customer_id,
            ordered_at  = EXCLUDED.ordered_at,
            amount      = EXCLUDED.amount,
            currency    = EXCLUDED.currency,
            status      = EXCLUDED.status,
            updated_at  = now()
        WHERE (o.customer_id, o.ordered_at, o.amount, o.currency, o.status)
              IS DISTINCT FROM
              (EXCLUDED.customer_id, EXCLUDED.ordered_at, EXCLUDED.amount,
               EXCLUDED.currency, EXCLUDED.status)
    RETURNING o.channel, o.order_id, (o.xmax = 0) AS inserted
)
"""

_UPSERT_COUNTS = _UPSERT + """
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
"""

_UPSERT_ROWS = _UPSERT + """
SELECT s.seq, up.inserted FROM up
JOIN order_staging s
  ON s.channel = up.channel AND s.order_id = up.order_id AND s.pass = %(pass)s
"""


def merge_orders(
    conn: psycopg.Connection, rows: Iterable[StagedOrder], *, per_row: bool = False
) -> MergeResult:
    """Stage ``rows`` with COPY and upsert them into ``orders`` within the open transaction.

    Customers referenced by the orders are created when missing. With ``per_row`` the result
    maps each staged ``seq`` that was inserted or updated to its outcome (for REST batches).
    """
    result = MergeResult()
    with conn.cursor() as cur:
        cur.execute(_CREATE_STAGING)
        with cur.copy(_COPY_STAGING) as copy:
            for seq, row in rows:
                copy.write_row((seq, *row))
                result.staged += 1
        if result.staged == 0:
            cur.execute("DROP TABLE order_staging")
            return result
        cur.execute(_NUMBER_PASSES)
        cur.execute("SELECT max(pass) FROM order_staging")
        passes = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(_INSERT_CUSTOMERS)
        for n in range(1, passes + 1):
            if per_row:
                cur.execute(_UPSERT_ROWS, {"pass": n})
                result.record(cur.fetchall())
            else:
                cur.execute(_UPSERT_COUNTS, {"pass": n})
                ins, upd = cur.fetchone()  # type: ignore[misc]
                result.inserted += ins
                result.updated += upd
        cur.execute("DROP TABLE order_staging")
    return result


# Bulk path, one chunk of a file at a time while the caller parses the next one.
#
# The fast path is a plain INSERT of the whole chunk in key order: the unique index does the
# existence check for free, and btree inserts in key order stay cheap. ON CONFLICT would cost ~50%
# more per row (speculative insertion). If any key already exists, or repeats within the chunk,
# the INSERT fails with a unique violation; the savepoint undoes it and the careful path runs:
# number the repeats, UPDATE existing keys, INSERT the new ones, pass by pass.
_FAST_INSERT = """
INSERT INTO orders (channel, order_id, customer_id, ordered_at, amount, currency, status)
SELECT channel, order_id, customer_id, ordered_at, amount, currency, status
FROM order_staging ORDER BY channel, order_id
"""

_BULK_UPDATE = """
UPDATE orders o
   SET customer_id = s.customer_id, ordered_at = s.ordered_at, amount = s.amount,
       currency = s.currency, status = s.status, updated_at = now()
  FROM order_staging s
 WHERE s.pass = %(pass)s AND o.channel = s.channel AND o.order_id = s.order_id
   AND (o.customer_id, o.ordered_at, o.amount, o.currency, o.status)
       IS DISTINCT FROM (s.customer_id, s.ordered_at, s.amount, s.currency, s.status)
"""

_BULK_INSERT = """
INSERT INTO orders (channel, order_id, customer_id, ordered_at, amount, currency, status)
SELECT channel, order_id, customer_id, ordered_at, amount, currency, status
FROM order_staging s
WHERE s.pass = %(pass)s
  AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.channel = s.channel AND o.order_id = s.order_id)
ORDER BY channel, order_id
"""

# New customers of a chunk. The plain INSERT (with its NOT EXISTS probe) is ~40% cheaper than
# ON CONFLICT DO NOTHING; the latter only runs if a concurrent writer got in between.
_BULK_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT s.customer_id FROM customer_id_staging s
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
ORDER BY s.customer_id
"""

_BULK_CUSTOMERS_SAFE = """
INSERT INTO customers (customer_id)
SELECT customer_id FROM customer_id_staging ORDER BY customer_id
ON CONFLICT DO NOTHING
"""


class OrderBlock(NamedTuple):
    """One chunk for :func:`merge_order_blocks`, as COPY text.

    ``orders``: lines ``seq, order_id, customer_id, channel, ordered_at, amount, currency,
    status``, tab-separated. ``customer_ids``: one id per line, covering at least every customer
    of ``orders`` not sent in an earlier block of the same merge.
    """

    orders: str
    customer_ids: str


def _merge_chunk_carefully(conn: psycopg.Connection, cur: psycopg.Cursor,
                           result: MergeResult) -> None:
    cur.execute("ANALYZE order_staging")
    cur.execute(_NUMBER_PASSES)
    cur.execute("SELECT coalesce(max(pass), 0) FROM order_staging")
    passes = cur.fetchone()[0]  # type: ignore[index]
    for n in range(1, passes + 1):
        cur.execute(_BULK_UPDATE, {"pass": n})
        result.updated += cur.rowcount
        try:
            with conn.transaction():
                cur.execute(_BULK_INSERT, {"pass": n})
                result.inserted += cur.rowcount
        except psycopg.errors.UniqueViolation:
            # A concurrent writer inserted one of these keys meanwhile: the upsert is exact.
            cur.execute(_UPSERT_COUNTS, {"pass": n})
            ins, upd = cur.fetchone()  # type: ignore[misc]
            result.inserted += ins
            result.updated += upd


def merge_order_blocks(conn: psycopg.Connection, blocks: Iterable[OrderBlock]
                       ) -> MergeResult:
    r"""Merge pre-formatted COPY text blocks, in order, in the open transaction.

    Each block holds lines ``seq\torder_id\tcustomer_id\tchannel\tordered_at\tamount\t
    currency\tstatus`` and is staged and merged before the next is read, so a key repeated
    across blocks keeps the file's order.
    """
    result = MergeResult()
    with conn.cursor() as cur:
        # Per-chunk joins against the growing tables must probe their indexes; a hash join would
        # rescan the whole table for every chunk.
        cur.execute("SET LOCAL enable_hashjoin = off")
        cur.execute("SET LOCAL enable_mergejoin = off")
        cur.execute(_CREATE_STAGING)
        cur.execute("CREATE TEMP TABLE customer_id_staging (customer_id text COLLATE \"C\")"
                    " ON COMMIT DROP")
        rebuild = _defer_secondary_index(cur)
        for block in blocks:
            cur.execute("TRUNCATE order_staging, customer_id_staging")
            with cur.copy("COPY customer_id_staging FROM STDIN") as copy:
                copy.write(block.customer_ids)
            with cur.copy(_COPY_STAGING) as copy:
                copy.write(block.orders)
            result.staged += block.orders.count("\n")
            try:
                with conn.transaction():
                    cur.execute(_BULK_CUSTOMERS)
            except psycopg.errors.UniqueViolation:
                cur.execute(_BULK_CUSTOMERS_SAFE)
            try:
                with conn.transaction():
                    cur.execute(_FAST_INSERT)
                    result.inserted += cur.rowcount
            except psycopg.errors.UniqueViolation:
                _merge_chunk_carefully(conn, cur, result)
        if rebuild:
            cur.execute(_CUSTOMER_INDEX)
        cur.execute("DROP TABLE order_staging, customer_id_staging")
    return result


_CUSTOMER_INDEX = "CREATE INDEX orders_customer_idx ON orders (customer_id, ordered_at)"


def _defer_secondary_index(cur: psycopg.Cursor) -> bool:
    """On the initial load into an empty ``orders``, drop the by-customer index until the end.

    Building an index once over the loaded rows is several times cheaper than maintaining it row
    by row (PostgreSQL manual, "Populating a Database"). It is rebuilt in the same transaction,
    so no reader ever sees the table without it; the price is that ``orders`` is locked for the
    duration of that first import. Later imports leave the index alone.
    """
    cur.execute("SELECT EXISTS (SELECT 1 FROM orders)")
    if cur.fetchone()[0]:  # type: ignore[index]
        return False
    cur.execute("DROP INDEX IF EXISTS orders_customer_idx")
    return True
