"""SQL for merging validated orders: COPY into a staging table, then upsert by (channel, order_id).

Everything happens in the caller's transaction, so a batch or a file lands whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

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


@dataclass
class MergeResult:
    """What a merge did: counts, and for small batches the outcome per staged ``seq``."""

    staged: int = 0
    inserted: int = 0
    updated: int = 0
    per_row: dict[int, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Staged rows that changed nothing."""
        return self.staged - self.inserted - self.updated


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
                for seq, inserted in cur.fetchall():
                    result.per_row[seq] = "inserted" if inserted else "updated"
                    if inserted:
                        result.inserted += 1
                    else:
                        result.updated += 1
            else:
                cur.execute(_UPSERT_COUNTS, {"pass": n})
                ins, upd = cur.fetchone()  # type: ignore[misc]
                result.inserted += ins
                result.updated += upd
        cur.execute("DROP TABLE order_staging")
    return result


# Bulk path. ON CONFLICT's speculative insertion costs ~50% more per row than a plain INSERT, so
# bulk loads update the existing keys first and then plain-insert the new ones in key order (btree
# locality). A concurrent writer inserting one of the same keys in between makes the plain INSERT
# fail; the savepoint then falls back to the ON CONFLICT statement, which is always correct.
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

_BULK_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT s.customer_id FROM order_staging s
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
GROUP BY s.customer_id
ORDER BY s.customer_id
"""


def merge_order_blocks(conn: psycopg.Connection, blocks: Iterable[str]) -> MergeResult:
    """Merge pre-formatted COPY text blocks in the open transaction.

    Blocks hold lines ``seq\torder_id\tcustomer_id\tchannel\tordered_at\tamount\tcurrency\t
    status``. They stream into one COPY while the caller produces the next block, then the
    staged rows are merged with one UPDATE and one INSERT per pass (each a single join against
    ``orders``, not one per block).
    """
    result = MergeResult()
    with conn.cursor() as cur:
        cur.execute(_CREATE_STAGING)
        with cur.copy(_COPY_STAGING) as copy:
            for block in blocks:
                copy.write(block)
        cur.execute("SELECT count(*) FROM order_staging")
        result.staged = cur.fetchone()[0]  # type: ignore[index]
        cur.execute("ANALYZE order_staging")
        cur.execute(_NUMBER_PASSES)
        cur.execute("SELECT coalesce(max(pass), 0) FROM order_staging")
        passes = cur.fetchone()[0]  # type: ignore[index]
        try:
            with conn.transaction():
                cur.execute(_BULK_CUSTOMERS)
        except psycopg.errors.UniqueViolation:
            cur.execute(_INSERT_CUSTOMERS)
        for n in range(1, passes + 1):
            cur.execute(_BULK_UPDATE, {"pass": n})
            result.updated += cur.rowcount
            try:
                with conn.transaction():
                    cur.execute(_BULK_INSERT, {"pass": n})
                    result.inserted += cur.rowcount
            except psycopg.errors.UniqueViolation:
                cur.execute(_UPSERT_COUNTS, {"pass": n})
                ins, upd = cur.fetchone()  # type: ignore[misc]
                result.inserted += ins
                result.updated += upd
        cur.execute("DROP TABLE order_staging")
    return result
