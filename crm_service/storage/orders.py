"""SQL for merging validated orders: COPY into a staging table, then upsert by (channel, order_id).

Everything happens in the caller's transaction, so a batch or a file lands whole or not at all.

Several records for one order in a batch or file are collapsed: the last one is what gets stored,
so sending [paid, refunded] twice stores "refunded" and changes nothing the second time. Outcomes
are reported per record: for a new order, its first record is ``inserted`` and each later record
that differs from the one before it ``updated``; for a stored order that changed, the last record
is ``updated``; everything else is ``duplicate``.

Writers coordinate through :mod:`crm_service.storage.locks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import NamedTuple

import psycopg

from crm_service.storage.locks import lock_exclusive, lock_shared
from crm_service.storage.staging import MergeResult

# (seq, (order_id, customer_id, channel, ordered_at ISO text, amount text, currency, status))
StagedOrder = tuple[int, tuple[str, str, str, str, str, str, str]]

_CREATE_STAGING = """
CREATE TEMP TABLE order_staging (
    seq         bigint NOT NULL,
    order_id    text COLLATE "C" NOT NULL,
    customer_id text COLLATE "C" NOT NULL,
    channel     text COLLATE "C" NOT NULL,
    ordered_at  timestamptz NOT NULL,
    amount      numeric(14, 2) NOT NULL,
    currency    char(3) NOT NULL,
    status      text NOT NULL
) ON COMMIT DROP
"""

_COPY_STAGING = (
    "COPY order_staging (seq, order_id, customer_id, channel, ordered_at, amount, currency, status)"
    " FROM STDIN"
)

_INSERT_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT DISTINCT s.customer_id FROM order_staging s
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
ORDER BY 1
ON CONFLICT DO NOTHING
"""

# The last record per key is upserted (in key order, so concurrent batches lock rows in the same
# order). xmax = 0 on a returned row means it was inserted; an unchanged order is not returned.
# Each staged record then gets its outcome as described in the module docstring.
_MERGE = """
WITH up AS (
    INSERT INTO orders AS o
        (channel, order_id, customer_id, ordered_at, amount, currency, status)
    SELECT channel, order_id, customer_id, ordered_at, amount, currency, status
    FROM (SELECT DISTINCT ON (channel, order_id) * FROM order_staging
          ORDER BY channel, order_id, seq DESC) last
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
),
occurrences AS (
    SELECT seq, channel, order_id,
           row_number() OVER (PARTITION BY channel, order_id ORDER BY seq) AS first_rank,
           row_number() OVER (PARTITION BY channel, order_id ORDER BY seq DESC) AS last_rank,
           (customer_id, ordered_at, amount, currency, status) IS DISTINCT FROM (
               lag(customer_id) OVER w, lag(ordered_at) OVER w, lag(amount) OVER w,
               lag(currency) OVER w, lag(status) OVER w) AS changed
    FROM order_staging
    WINDOW w AS (PARTITION BY channel, order_id ORDER BY seq)
),
outcomes AS (
    SELECT s.seq,
           CASE
               WHEN up.inserted AND s.first_rank = 1 THEN 'inserted'
               WHEN up.inserted AND s.changed THEN 'updated'
               WHEN NOT up.inserted AND s.last_rank = 1 THEN 'updated'
               ELSE 'duplicate'
           END AS outcome
    FROM occurrences s LEFT JOIN up USING (channel, order_id)
)
"""

_MERGE_ROWS = _MERGE + "SELECT seq, outcome FROM outcomes WHERE outcome <> 'duplicate'"
_MERGE_COUNTS = _MERGE + """
SELECT count(*) FILTER (WHERE outcome = 'inserted'), count(*) FILTER (WHERE outcome = 'updated')
FROM outcomes
"""


def merge_orders(
    conn: psycopg.Connection, rows: Iterable[StagedOrder], *, lock_wait_seconds: float = 10.0
) -> MergeResult:
    """Stage ``rows`` with COPY and merge them into ``orders`` within the open transaction.

    Customers referenced by the orders are created when missing. The result maps each staged
    ``seq`` that inserted or updated an order to its outcome; the rest are duplicates.
    """
    result = MergeResult()
    with conn.cursor() as cur:
        lock_shared(conn, lock_wait_seconds)
        cur.execute(_CREATE_STAGING)
        with cur.copy(_COPY_STAGING) as copy:
            for seq, row in rows:
                copy.write_row((seq, *row))
                result.staged += 1
        if result.staged:
            cur.execute(_INSERT_CUSTOMERS)
            cur.execute(_MERGE_ROWS)
            result.record_outcomes(cur.fetchall())
        cur.execute("DROP TABLE order_staging")
    return result


# Bulk path, one chunk of a file at a time while the caller parses the next one.
#
# The fast path COPYs each chunk, sorted by key, straight into ``orders``: the unique index does
# the existence check for free, btree inserts in key order stay cheap, and COPY writes the heap
# in multi-row batches (a staging table plus INSERT .. SELECT cost about twice as much, ON
# CONFLICT ~50% more again). If any key already exists, or repeats within the chunk, the COPY
# fails with a unique violation and the savepoint undoes it. From then on the import is careful:
# that chunk and every later one are staged in file order, numbered by an identity column as they
# arrive, and one collapsing merge (_MERGE) runs over all of them at the end, so repeats anywhere
# in the file resolve to the file's last record.
_BULK_COLUMNS = "(channel, order_id, customer_id, ordered_at, amount, currency, status)"
_COPY_ORDERS = f"COPY orders {_BULK_COLUMNS} FROM STDIN"
_COPY_BULK_STAGING = f"COPY order_staging {_BULK_COLUMNS} FROM STDIN"

_CREATE_BULK_STAGING = _CREATE_STAGING.replace(
    "seq         bigint NOT NULL,", "seq         bigint GENERATED ALWAYS AS IDENTITY,")

# New customers of a chunk. A plain INSERT with a NOT EXISTS probe is ~40% cheaper than ON
# CONFLICT DO NOTHING; it is safe here because the import holds the writers' lock exclusively.
_BULK_CUSTOMERS = """
INSERT INTO customers (customer_id)
SELECT s.customer_id FROM customer_id_staging s
WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)
ORDER BY s.customer_id
"""

# The secondary indexes of ``orders`` (migrations 0001 and 0019), rebuilt after an initial load.
_SECONDARY_INDEXES = {
    "orders_customer_idx": "CREATE INDEX orders_customer_idx ON orders (customer_id, ordered_at)",
    "orders_paid_at_idx": "CREATE INDEX orders_paid_at_idx ON orders (ordered_at)"
                          " WHERE status = 'paid'",
}


class OrderBlock(NamedTuple):
    r"""One chunk of a file for :func:`merge_order_blocks`.

    ``lines``: the chunk's orders in file order, each from :func:`bulk_line`.
    ``customer_ids``: covering at least every customer of the chunk not sent in an earlier
    block of the same merge; ``first_sent`` says that none of them was sent in an earlier block.
    ``accounts``: channel accounts ``"channel\tbuyer id\tgenerated customer id\n"`` (as
    :func:`account_line` writes them) the chunk's lines
    name by their generated id, each sent once per merge (unless ``first_sent`` is false).
    ``claims``: lines sent with both a customer id and a buyer id: (channel, buyer id, customer
    id, the account's generated id, line number in the file, index in ``lines``).
    """

    lines: list[str]
    customer_ids: list[str]
    first_sent: bool
    accounts: list[str] = []
    claims: list[tuple[str, str, str, str, int, int]] = []


# Accounts of a block already held by a customer other than the one the block names them with.
_CREATE_ACCOUNTS = """
CREATE TEMP TABLE account_staging (
    channel text COLLATE "C" NOT NULL, external_id text COLLATE "C" NOT NULL,
    customer_id text COLLATE "C" NOT NULL, claimed boolean NOT NULL DEFAULT false
) ON COMMIT DROP
"""
_HELD_ELSEWHERE = """
SELECT s.channel, s.external_id, s.customer_id, s.claimed, i.customer_id
FROM account_staging s
JOIN customer_identities i USING (channel, external_id)
WHERE i.customer_id <> s.customer_id
"""
_NEW_ACCOUNTS = """
INSERT INTO customer_identities (channel, external_id, customer_id)
SELECT DISTINCT ON (s.channel, s.external_id) s.channel, s.external_id, s.customer_id
FROM account_staging s
WHERE NOT EXISTS (SELECT 1 FROM customer_identities i
                  WHERE i.channel = s.channel AND i.external_id = s.external_id)
ORDER BY s.channel, s.external_id
"""

Rejector = Callable[[int, str, str], None]

# The indexes of customer_identities (migrations 0001 and 0021), dropped during an initial load.
_IDENTITY_INDEXES_DROP = (
    "ALTER TABLE customer_identities DROP CONSTRAINT customer_identities_pkey",
    "DROP INDEX customer_identities_customer_idx")
_IDENTITY_INDEXES_CREATE = (
    "ALTER TABLE customer_identities ADD CONSTRAINT customer_identities_pkey"
    " PRIMARY KEY (external_id, channel)",
    "CREATE INDEX customer_identities_customer_idx ON customer_identities (customer_id)")


class _Accounts:
    """Resolves a block's channel accounts against ``customer_identities`` (the feeding thread).

    ``remap`` (generated id -> the account's customer) grows as accounts turn out to belong to
    someone already; lines naming a remapped id are rewritten. While the table was empty when
    the import began and every account is new to it, a block's accounts are COPYed straight in.
    """

    def __init__(self, cur: psycopg.Cursor, reject: Rejector | None) -> None:
        self.cur = cur
        self.reject = reject
        self.remap: dict[str, str] = {}
        cur.execute("SELECT NOT EXISTS (SELECT 1 FROM customer_identities)")
        self.direct = bool(cur.fetchone()[0])  # type: ignore[index]
        self.staging = False
        # Into an empty table, the indexes are built once at the end (as for orders, and for
        # the same reason: random account and customer ids made index upkeep cost three times
        # the rows' own COPY). They come back before any lookup needs them.
        self.deferred = self.direct
        if self.deferred:
            for drop in _IDENTITY_INDEXES_DROP:
                cur.execute(drop)

    def restore_indexes(self) -> None:
        """Rebuild the indexes dropped on an initial load (at the end, or before a lookup)."""
        if self.deferred:
            for create in _IDENTITY_INDEXES_CREATE:
                self.cur.execute(create)
            self.deferred = False

    def resolve(self, block: OrderBlock) -> tuple[list[str], list[str], list[str]]:
        """The block's lines and new customer ids after resolution, and accounts to insert."""
        accounts, claims, remap = block.accounts, block.claims, self.remap
        rejected: set[int] = set()
        if claims or not self.direct or not block.first_sent:
            self.restore_indexes()
            held: dict[tuple[str, str], str] = {}
            for chan, ext, cid, was_claimed, owner in self._held_elsewhere(accounts, claims):
                held[(chan, ext)] = owner
                if not was_claimed:
                    remap[cid] = owner  # a generated id whose account is someone's already
            claimed: dict[tuple[str, str], str] = {}
            for chan, ext, cid, generated, line, index in claims:
                holder = held.get((chan, ext)) or claimed.get((chan, ext))
                if holder is not None and holder != cid:
                    rejected.add(index)
                    if self.reject is not None:
                        self.reject(line, block.lines[index].split("\t", 2)[1],
                                    f"{chan} account {ext!r} belongs to another customer, not "
                                    f"{cid!r}; send one of the two, or merge the customers")
                    continue
                claimed[(chan, ext)] = cid
                remap[generated] = cid
            if remap:
                accounts = [a for a in accounts if a.split("\t", 2)[2][:-1] not in remap]
            accounts += [account_line(chan, ext, cid) for (chan, ext), cid in claimed.items()]
            self.direct = False
        lines = block.lines
        if remap or rejected:
            lines = [_remapped(line, remap) for i, line in enumerate(lines) if i not in rejected]
        ids = block.customer_ids
        if remap:
            ids = list({remap.get(c, c) for c in ids})
        return lines, ids, accounts

    def _empty_staging(self) -> None:
        """The account staging table, created on first use, empty."""
        if self.staging:
            self.cur.execute("TRUNCATE account_staging")
        else:
            self.cur.execute(_CREATE_ACCOUNTS)
            self.staging = True

    def _held_elsewhere(self, accounts: list[str],
                        claims: list[tuple[str, str, str, str, int, int]]
                        ) -> list[tuple[str, str, str, bool, str]]:
        cur = self.cur
        self._empty_staging()
        with cur.copy("COPY account_staging FROM STDIN") as copy:
            copy.write(_copy_text([f"{a[:-1]}\tf\n" for a in accounts]
                                  + [f"{c}\t{e}\t{k}\tt\n" for c, e, k, _, _, _ in claims]))
        cur.execute(_HELD_ELSEWHERE)
        return cur.fetchall()

    def insert(self, accounts: list[str], direct: bool) -> None:
        """Link the new accounts (their customers exist by now)."""
        if not accounts:
            return
        if direct:
            text = _copy_text(accounts)
            with self.cur.copy("COPY customer_identities (channel, external_id, customer_id)"
                               " FROM STDIN") as copy:
                copy.write(text)
            return
        self._empty_staging()
        with self.cur.copy("COPY account_staging FROM STDIN") as copy:
            copy.write(_copy_text([f"{a[:-1]}\tf\n" for a in accounts]))
        self.cur.execute(_NEW_ACCOUNTS)


def _remapped(line: str, remap: dict[str, str]) -> str:
    channel, order_id, customer_id, rest = line.split("\t", 3)
    target = remap.get(customer_id)
    return line if target is None else f"{channel}\t{order_id}\t{target}\t{rest}"


def account_line(channel: str, buyer_id: str, customer_id: str) -> str:
    """One new channel account of an OrderBlock (fields not escaped yet)."""
    return f"{channel}\t{buyer_id}\t{customer_id}\n"


def bulk_line_of(row: tuple[str, str, str, str, str, str, str], customer_id: str) -> str:
    """:func:`bulk_line` of ``row`` with another customer id (a resolved account's)."""
    return f"{row[2]}\t{row[0]}\t{customer_id}\t{row[3]}\t{row[4]}\t{row[5]}\t{row[6]}\n"


def bulk_line(row: tuple[str, str, str, str, str, str, str]) -> str:
    """One checked order (as ``ingestion.check_order`` returns it) as a line of an OrderBlock.

    Channel and order id come first, so sorting lines sorts them by key; fields are not
    escaped yet.
    """
    return f"{row[2]}\t{row[0]}\t{row[1]}\t{row[3]}\t{row[4]}\t{row[5]}\t{row[6]}\n"


def _copy_text(lines: list[str], end: str = "") -> str:
    text = end.join(lines) + end if end and lines else "".join(lines)
    # COPY text format: checked fields hold no control characters (ids must be printable, the
    # rest match patterns), so only backslash needs escaping, and a whole block at once.
    return text.replace("\\", "\\\\") if "\\" in text else text


def merge_order_blocks(conn: psycopg.Connection, blocks: Iterable[OrderBlock], *,
                       reject_claim: Rejector | None = None) -> MergeResult:
    """Merge blocks of a file, in file order, in the open transaction.

    Takes the writers' lock exclusively for the rest of the transaction. Lines whose claim
    (customer id with a buyer id) conflicts with the account's owner are left out and passed
    to ``reject_claim(line number, order id, reason)``.
    """
    result = MergeResult()
    lock_exclusive(conn)
    careful = False
    with conn.cursor() as cur:
        # Per-chunk joins against the growing tables must probe their indexes; a hash join would
        # rescan the whole table for every chunk.
        cur.execute("SET LOCAL enable_hashjoin = off")
        cur.execute("SET LOCAL enable_mergejoin = off")
        cur.execute(_CREATE_BULK_STAGING)
        cur.execute("CREATE TEMP TABLE customer_id_staging (customer_id text COLLATE \"C\")"
                    " ON COMMIT DROP")
        rebuild = _defer_secondary_index(cur)
        # Into an empty customers table, ids this import sends once are new: no probe needed.
        cur.execute("SELECT NOT EXISTS (SELECT 1 FROM customers)")
        new_customers = cur.fetchone()[0]  # type: ignore[index]
        # Into an empty customers table the primary key, too, is built once at the end: ids
        # drawn from a hash (generated for channel accounts) land all over the index, and
        # keeping it up row by row made the customers' COPY four times slower.
        customers_pk = _DeferredKey(cur, "customers", "customers_pkey", "(customer_id)",
                                    defer=bool(new_customers))
        resolver: _Accounts | None = None
        for block in blocks:
            lines, ids, accounts = block.lines, block.customer_ids, block.accounts
            if block.accounts or block.claims or (resolver and resolver.remap):
                resolver = resolver or _Accounts(cur, reject_claim)
                direct_accounts = resolver.direct and block.first_sent and not block.claims
                lines, ids, accounts = resolver.resolve(block)
            direct = new_customers and block.first_sent and not (resolver and resolver.remap)
            if not direct:
                customers_pk.restore()
            _add_customers(cur, ids, direct=direct)
            if resolver is not None:
                resolver.insert(accounts, direct=direct_accounts and not resolver.remap)
            result.staged += len(lines)
            if not careful:
                try:
                    with conn.transaction(), cur.copy(_COPY_ORDERS) as copy:
                        copy.write(_copy_text(sorted(lines)))
                    result.inserted += len(lines)
                    continue
                except psycopg.errors.UniqueViolation:
                    careful = True
            with cur.copy(_COPY_BULK_STAGING) as copy:
                copy.write(_copy_text(lines))
        if careful:
            cur.execute("ANALYZE order_staging")
            cur.execute(_MERGE_COUNTS)
            inserted, updated = cur.fetchone()  # type: ignore[misc]
            result.inserted += inserted
            result.updated += updated
        if rebuild:
            for create in _SECONDARY_INDEXES.values():
                cur.execute(create)
        if resolver is not None:
            resolver.restore_indexes()
        customers_pk.restore()
        cur.execute("DROP TABLE order_staging, customer_id_staging")
        if resolver is not None and resolver.staging:
            cur.execute("DROP TABLE account_staging")
    return result


class _DeferredKey:
    """A primary key dropped for an initial load and added back (once) when needed or at the end.

    No reader sees the table without it: the transaction holds the table's lock until commit.
    """

    def __init__(self, cur: psycopg.Cursor, table: str, name: str, columns: str, *,
                 defer: bool) -> None:
        self.cur, self.table, self.name, self.columns = cur, table, name, columns
        self.dropped = defer
        if defer:
            cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")

    def restore(self) -> None:
        """Add the key back if it is dropped."""
        if self.dropped:
            self.cur.execute(f"ALTER TABLE {self.table} ADD CONSTRAINT {self.name}"
                             f" PRIMARY KEY {self.columns}")
            self.dropped = False


def _add_customers(cur: psycopg.Cursor, customer_ids: list[str], *, direct: bool) -> None:
    """Create the block's customers that do not exist yet, in key order."""
    text = _copy_text(sorted(customer_ids), "\n")
    if direct:
        with cur.copy("COPY customers (customer_id) FROM STDIN") as copy:
            copy.write(text)
        return
    cur.execute("TRUNCATE customer_id_staging")
    with cur.copy("COPY customer_id_staging FROM STDIN") as copy:
        copy.write(text)
    cur.execute(_BULK_CUSTOMERS)


def _defer_secondary_index(cur: psycopg.Cursor) -> bool:
    """On the initial load into an empty ``orders``, drop the secondary indexes until the end.

    Building an index once over the loaded rows is several times cheaper than maintaining it row
    by row (PostgreSQL manual, "Populating a Database"). It is rebuilt in the same transaction,
    so no reader ever sees the table without it; the price is that ``orders`` is locked for the
    duration of that first import. Later imports leave the index alone.
    """
    cur.execute("SELECT EXISTS (SELECT 1 FROM orders)")
    if cur.fetchone()[0]:  # type: ignore[index]
        return False
    for name in _SECONDARY_INDEXES:
        cur.execute(f"DROP INDEX IF EXISTS {name}")
    return True


def newest_paid_order_day(conn: psycopg.Connection, timezone: str) -> date | None:
    """The reporting-zone day of the newest paid order, or None when there is none."""
    row = conn.execute("SELECT (max(ordered_at) AT TIME ZONE %s)::date FROM orders"
                       " WHERE status = 'paid'", (timezone,)).fetchone()
    return row[0] if row else None
