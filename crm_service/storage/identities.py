"""SQL for the identity graph: channel accounts, aliases, merges and their undoing, link candidates.

A merge moves the merged customers' orders, channel identities and aliases to the survivor, fills
the survivor's empty contact fields from them, turns them into aliases (``customers.merged_into``)
and records all of it (``customer_merges`` and its two child tables), so :func:`undo_merge` can
put everything back. Everything is set-based: one merge from the API and a hundred thousand from
``identities resolve`` run the same statements. Callers hold the writers' lock exclusively
(:func:`crm_service.storage.locks.lock_exclusive`) and ``scoring_state`` (event ids in commit
order), so no order or profile lands on a customer while it is being merged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from crm_service.privacy.refs import ref_sql

CONTACT_FIELDS = ("email", "phone", "name")


def lock_for_merging(conn: psycopg.Connection) -> None:
    """Serialise with writers (exclusively), erasure and publishing (events in commit order)."""
    from crm_service.storage.locks import lock_exclusive

    lock_exclusive(conn)
    conn.execute("SELECT 1 FROM scoring_state FOR UPDATE")


def limit_lock_wait(conn: psycopg.Connection, *, seconds: float) -> None:
    """Give up on locks after ``seconds`` for the rest of the transaction (LockNotAvailable)."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(seconds * 1000)}",))


@dataclass(frozen=True)
class Held:
    """One customer row as a merge sees it."""

    customer_id: str
    merged_into: str | None


def customers_held(conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, Held]:
    """The rows of ``ids`` that exist, locked in key order."""
    with conn.cursor(row_factory=class_row(Held)) as cur:
        rows = cur.execute(
            "SELECT customer_id, merged_into FROM customers WHERE customer_id = ANY(%s)"
            " ORDER BY customer_id FOR UPDATE", (list(ids),)).fetchall()
    return {r.customer_id: r for r in rows}


def survivors_of(conn: psycopg.Connection, ids: Iterable[str]) -> dict[str, str]:
    """``alias -> survivor`` for those of ``ids`` that are merged customers."""
    rows = conn.execute(
        "SELECT customer_id, merged_into FROM customers"
        " WHERE customer_id = ANY(%s) AND merged_into IS NOT NULL", (list(set(ids)),)).fetchall()
    return dict(rows)


def all_aliases(conn: psycopg.Connection) -> dict[str, str]:
    """Every ``alias -> survivor`` (a bulk import loads them once, under the writers' lock)."""
    return dict(conn.execute(
        "SELECT customer_id, merged_into FROM customers WHERE merged_into IS NOT NULL"))


def aliases(conn: psycopg.Connection, survivor: str) -> list[dict[str, Any]]:
    """The customers merged into ``survivor``, with when and by which merge."""
    return [{"customer_id": cid, "merge_id": None if mid is None else str(mid), "merged_at": at}
            for cid, mid, at in conn.execute(
                "SELECT c.customer_id, c.merge_id, m.created_at FROM customers c"
                " LEFT JOIN customer_merges m ON m.id = c.merge_id"
                " WHERE c.merged_into = %s ORDER BY c.customer_id", (survivor,))]


def accounts_of(conn: psycopg.Connection, ids: Sequence[str]) -> list[tuple[str, str]]:
    """The (channel, external_id) accounts of these customers."""
    return [(c, e) for c, e in conn.execute(
        "SELECT channel, external_id FROM customer_identities WHERE customer_id = ANY(%s)",
        (list(ids),))]


def claim_identities(conn: psycopg.Connection, identities: list[tuple[str, str]]
                     ) -> dict[tuple[str, str], str]:
    """Lock each (channel, external_id) (advisory, in a fixed order) and return the known owners.

    Two batches claiming one new identity then run one after the other, and the second sees the
    first's claim.
    """
    if not identities:
        return {}
    chans, exts = [c for c, _ in identities], [e for _, e in identities]
    conn.execute(
        "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT"
        " hashtextextended(c || '/' || e, 0) AS k"
        " FROM unnest(%s::text[], %s::text[]) AS q(c, e) ORDER BY 1) locks",
        (chans, exts)).fetchall()
    rows = conn.execute(
        "SELECT i.channel, i.external_id, i.customer_id FROM customer_identities i"
        " JOIN unnest(%s::text[], %s::text[]) AS q(channel, external_id)"
        " USING (channel, external_id)", (chans, exts)).fetchall()
    return {(c, e): cid for c, e, cid in rows}


def account_owners(conn: psycopg.Connection, accounts: Iterable[tuple[str, str]]
                   ) -> dict[tuple[str, str], str]:
    """The customers of those (channel, external_id) accounts that are known (one statement)."""
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE account_lookup (channel text COLLATE \"C\","
                    " external_id text COLLATE \"C\") ON COMMIT DROP")
        with cur.copy("COPY account_lookup FROM STDIN") as copy:
            for account in accounts:
                copy.write_row(account)
        rows = cur.execute("SELECT i.channel, i.external_id, i.customer_id FROM account_lookup l"
                           " JOIN customer_identities i USING (channel, external_id)").fetchall()
        cur.execute("DROP TABLE account_lookup")
    return {(c, e): cid for c, e, cid in rows}


def create_customers_with_identities(conn: psycopg.Connection,
                                     links: list[tuple[str, str, str]]) -> None:
    """Create each customer (if missing) and link (channel, external_id) to it."""
    if not links:
        return
    ids = sorted({cid for _, _, cid in links})
    conn.execute("INSERT INTO customers (customer_id) SELECT unnest(%s::text[])"
                 " ON CONFLICT DO NOTHING", (ids,))
    conn.execute(
        "INSERT INTO customer_identities (channel, external_id, customer_id)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
        ([c for c, _, _ in links], [e for _, e, _ in links], [k for _, _, k in links]))


# ---- merges -------------------------------------------------------------------------------

_PLAN = """
CREATE TEMP TABLE merge_plan (
    seq int NOT NULL, survivor text COLLATE "C" NOT NULL, merged text COLLATE "C" NOT NULL,
    pos int NOT NULL, merge_id bigint
) ON COMMIT DROP
"""

_NUMBER = """
WITH ids AS (
    SELECT seq, nextval(pg_get_serial_sequence('customer_merges', 'id')) AS merge_id
    FROM (SELECT DISTINCT seq FROM merge_plan ORDER BY seq) s)
UPDATE merge_plan p SET merge_id = ids.merge_id FROM ids WHERE ids.seq = p.seq
"""

_RECORD = """
INSERT INTO customer_merges (id, survivor_id, merged_ids, actor, reason)
OVERRIDING SYSTEM VALUE
SELECT merge_id, survivor, array_agg(merged ORDER BY pos), %(actor)s, %(reason)s
FROM merge_plan GROUP BY merge_id, survivor ORDER BY merge_id
"""

_MOVE_ORDERS = """
WITH moved AS (
    UPDATE orders o SET customer_id = p.survivor, updated_at = now()
    FROM merge_plan p WHERE o.customer_id = p.merged
    RETURNING p.merge_id, o.channel, o.order_id, p.merged)
INSERT INTO customer_merge_orders (merge_id, channel, order_id, from_id)
SELECT merge_id, channel, order_id, merged FROM moved
"""

_MOVE_IDENTITIES = """
WITH moved AS (
    UPDATE customer_identities i SET customer_id = p.survivor
    FROM merge_plan p WHERE i.customer_id = p.merged
    RETURNING p.merge_id, i.channel, i.external_id, p.merged)
INSERT INTO customer_merge_identities (merge_id, channel, external_id, from_id)
SELECT merge_id, channel, external_id, merged FROM moved
"""

# Aliases of a merged customer now point at the new survivor directly (lookups take one hop).
_REPOINT = """
UPDATE customers a SET merged_into = p.survivor
FROM merge_plan p WHERE a.merged_into = p.merged
RETURNING p.merge_id, a.customer_id, p.merged
"""

# A survivor's empty contact field takes the first merged customer's value (in `from` order).
_FILL = """
WITH src AS (
    SELECT DISTINCT ON (p.merge_id) p.merge_id, p.survivor, p.merged, c.{f} AS v, c.{fn} AS vn
    FROM merge_plan p JOIN customers c ON c.customer_id = p.merged
    WHERE c.{f} IS NOT NULL ORDER BY p.merge_id, p.pos)
UPDATE customers s SET {f} = src.v, {set_normalized} updated_at = now()
FROM src WHERE s.customer_id = src.survivor AND s.{f} IS NULL
RETURNING src.merge_id, src.merged
"""

_MARK = """
UPDATE customers c SET merged_into = p.survivor, merge_id = p.merge_id, updated_at = now()
FROM merge_plan p WHERE c.customer_id = p.merged
"""

_EVENTS = """
INSERT INTO events (type, customer_id, run_id, data)
SELECT 'customer.merged', survivor, NULL, jsonb_build_object(
    'merge_id', merge_id::text,
    'customer_ref', encode({ref_survivor}, 'hex'),
    'merged_refs', jsonb_agg(encode({ref_merged}, 'hex') ORDER BY pos),
    'merged_at', now())
FROM merge_plan GROUP BY merge_id, survivor ORDER BY merge_id
""".format(ref_survivor=ref_sql("survivor"), ref_merged=ref_sql("merged"))


@dataclass(frozen=True)
class Merged:
    """One merge as recorded (:func:`moved_counts` says what it moved)."""

    merge_id: int
    survivor_id: str
    merged_ids: list[str]


def apply_merges(conn: psycopg.Connection, plans: Sequence[tuple[str, Sequence[str]]], *,
                 actor: str, reason: str | None, ref_params: dict[str, bytes]) -> list[Merged]:
    """Merge each ``(survivor, merged ids)``; the caller has locked and checked them.

    Checked means: every id exists and is not an alias, no id appears twice across the plans,
    no survivor is merged. Returns the merges in plan order.
    """
    if not plans:
        return []
    with conn.cursor() as cur:
        cur.execute(_PLAN)
        with cur.copy("COPY merge_plan (seq, survivor, merged, pos) FROM STDIN") as copy:
            for seq, (survivor, merged) in enumerate(plans):
                for pos, cid in enumerate(merged):
                    copy.write_row((seq, survivor, cid, pos))
        cur.execute("ANALYZE merge_plan")
        cur.execute(_NUMBER)
        cur.execute(_RECORD, {"actor": actor, "reason": reason})
        cur.execute(_MOVE_ORDERS)
        cur.execute(_MOVE_IDENTITIES)
        details: dict[int, dict[str, dict[str, str]]] = {}
        for merge_id, alias, previous in cur.execute(_REPOINT).fetchall():
            details.setdefault(merge_id, {}).setdefault("aliases", {})[alias] = previous
        for field in CONTACT_FIELDS:
            normalized = f"{field}_normalized" if field != "name" else field
            fill = _FILL.format(f=field, fn=normalized, set_normalized="" if field == "name"
                                else f"{normalized} = src.vn,")
            for merge_id, source in cur.execute(fill).fetchall():
                details.setdefault(merge_id, {}).setdefault("filled", {})[field] = source
        cur.execute(_MARK)
        if details:
            cur.execute(
                "UPDATE customer_merges m SET details = d.details::jsonb"
                " FROM unnest(%s::bigint[], %s::text[]) AS d(id, details) WHERE m.id = d.id",
                (list(details), [_json(v) for v in details.values()]))
        # Review candidates naming a merged customer are settled or re-found under the survivor.
        cur.execute("DELETE FROM identity_link_candidates l USING merge_plan p"
                    " WHERE l.customer_a = p.merged OR l.customer_b = p.merged")
        cur.execute(_EVENTS, ref_params)
        rows = cur.execute(
            "SELECT merge_id, survivor, array_agg(merged ORDER BY pos) FROM merge_plan"
            " GROUP BY merge_id, survivor ORDER BY merge_id").fetchall()
        cur.execute("DROP TABLE merge_plan")
    return [Merged(int(m), s, list(ids)) for m, s, ids in rows]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class MergeRecord:
    """One row of ``customer_merges``."""

    id: int
    survivor_id: str
    merged_ids: list[str]
    actor: str
    reason: str | None
    details: dict[str, Any]
    created_at: datetime
    undone_at: datetime | None
    undone_by: str | None


def merge_record(conn: psycopg.Connection, merge_id: int, *, lock: bool = False
                 ) -> MergeRecord | None:
    """The merge ``merge_id`` (locked with ``lock``)."""
    with conn.cursor(row_factory=class_row(MergeRecord)) as cur:
        return cur.execute(
            "SELECT id, survivor_id, merged_ids, actor, reason, details, created_at, undone_at,"
            " undone_by FROM customer_merges WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (merge_id,)).fetchone()


def merges_of(conn: psycopg.Connection, customer_id: str, limit: int = 50) -> list[MergeRecord]:
    """Merges naming the customer (as survivor or merged), newest first."""
    with conn.cursor(row_factory=class_row(MergeRecord)) as cur:
        return cur.execute(
            "SELECT id, survivor_id, merged_ids, actor, reason, details, created_at, undone_at,"
            " undone_by FROM customer_merges"
            " WHERE survivor_id = %(c)s OR merged_ids @> ARRAY[%(c)s]::text[]"
            " ORDER BY id DESC LIMIT %(n)s", {"c": customer_id, "n": limit}).fetchall()


def latest_open_merge(conn: psycopg.Connection, survivor: str) -> int | None:
    """The newest merge into ``survivor`` that is not undone."""
    row = conn.execute("SELECT max(id) FROM customer_merges WHERE survivor_id = %s"
                       " AND undone_at IS NULL", (survivor,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def moved_counts(conn: psycopg.Connection, merge_id: int) -> tuple[int, int]:
    """How many orders and identities the merge moved."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM customer_merge_orders WHERE merge_id = %(m)s),"
        " (SELECT count(*) FROM customer_merge_identities WHERE merge_id = %(m)s)",
        {"m": merge_id}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# A row a later merge (not undone) moved again belongs to that merge now: left where it is.
_NOT_MOVED_SINCE = (" AND NOT EXISTS (SELECT 1 FROM {moves} l JOIN customer_merges lm"
                    " ON lm.id = l.merge_id WHERE l.channel = m.channel AND l.{a} = m.{a}"
                    " AND l.merge_id > m.merge_id AND lm.undone_at IS NULL)")


def undo_merge(conn: psycopg.Connection, record: MergeRecord, *, actor: str,
               ref_params: dict[str, bytes]) -> tuple[int, int, int]:
    """Put back what ``record`` moved; the caller has checked it may be undone.

    Orders and identities the merge moved that the survivor still holds go back to the customer
    they came from; aliases it re-pointed point at their old target again; contact fields it
    filled are emptied again unless they changed since. Returns (orders, identities, event id).
    """
    survivor, merged = record.survivor_id, record.merged_ids
    params = {"m": record.id, "s": survivor}
    orders = conn.execute(
        "UPDATE orders o SET customer_id = m.from_id, updated_at = now()"
        " FROM customer_merge_orders m WHERE m.merge_id = %(m)s AND o.channel = m.channel"
        " AND o.order_id = m.order_id AND o.customer_id = %(s)s" + _NOT_MOVED_SINCE.format(
            moves="customer_merge_orders", a="order_id"), params).rowcount
    identities = conn.execute(
        "UPDATE customer_identities i SET customer_id = m.from_id"
        " FROM customer_merge_identities m WHERE m.merge_id = %(m)s AND i.channel = m.channel"
        " AND i.external_id = m.external_id AND i.customer_id = %(s)s" + _NOT_MOVED_SINCE.format(
            moves="customer_merge_identities", a="external_id"), params).rowcount
    for field, source in (record.details.get("filled") or {}).items():
        also = "" if field == "name" else f"{field}_normalized = NULL,"
        conn.execute(
            f"UPDATE customers s SET {field} = NULL, {also} updated_at = now()"
            f" FROM customers f WHERE s.customer_id = %(s)s AND f.customer_id = %(f)s"
            f" AND s.{field} IS NOT DISTINCT FROM f.{field}", {"s": survivor, "f": source})
    conn.execute("UPDATE customers SET merged_into = NULL, merge_id = NULL, updated_at = now()"
                 " WHERE customer_id = ANY(%(ids)s) AND merged_into = %(s)s",
                 {"ids": merged, "s": survivor})
    repointed = record.details.get("aliases") or {}
    if repointed:
        conn.execute(
            "UPDATE customers c SET merged_into = r.previous FROM unnest(%s::text[], %s::text[])"
            " AS r(alias, previous) WHERE c.customer_id = r.alias AND c.merged_into = %s",
            (list(repointed), list(repointed.values()), survivor))
    conn.execute("UPDATE customer_merges SET undone_at = now(), undone_by = %s WHERE id = %s",
                 (actor, record.id))
    event = conn.execute(
        "INSERT INTO events (type, customer_id, run_id, data)"
        " SELECT 'customer.unmerged', %(s)s, NULL, jsonb_build_object("
        " 'merge_id', %(m)s::text, 'customer_ref', encode(" + ref_sql("%(s)s::text") + ", 'hex'),"
        " 'merged_refs', (SELECT jsonb_agg(encode(" + ref_sql("x") + ", 'hex') ORDER BY o)"
        "   FROM unnest(%(ids)s::text[]) WITH ORDINALITY AS u(x, o)),"
        " 'unmerged_at', now()) RETURNING id",
        {**params, "ids": merged, **ref_params}).fetchone()
    assert event is not None
    return orders, identities, int(event[0])


def later_dependents(conn: psycopg.Connection, record: MergeRecord) -> list[int]:
    """Merges after ``record``, not undone, that took its survivor or any of its merged ids."""
    ids = [record.survivor_id, *record.merged_ids]
    return [int(r[0]) for r in conn.execute(
        "SELECT id FROM customer_merges WHERE id > %s AND undone_at IS NULL"
        " AND merged_ids && %s::text[] ORDER BY id", (record.id, ids))]


# ---- linking rules ------------------------------------------------------------------------

@dataclass(frozen=True)
class Shared:
    """Customers (not aliases) that share one normalised contact value, oldest first."""

    rule: str
    value: str
    customer_ids: list[str]


def shared_contacts(conn: psycopg.Connection, rules: Sequence[str],
                    among: Sequence[str] | None = None) -> list[Shared]:
    """Groups of two or more people (survivors) with the same normalised phone or email.

    An alias's own contact data counts for its survivor. ``among``: only groups that include
    one of these customers (ingest); None: the whole base. Ids in no particular order.
    """
    out: list[Shared] = []
    for rule in rules:
        column = {"phone": "phone_normalized", "email": "email_normalized"}[rule]
        person = "coalesce(c.merged_into, c.customer_id)"
        params: tuple[Any, ...] = ()
        if among is None:
            where = f"c.{column} IS NOT NULL"
        else:
            where = (f"c.{column} IN (SELECT {column} FROM customers WHERE customer_id = ANY(%s)"
                     f" AND {column} IS NOT NULL)")
            params = (list(among),)
        sql = (f"SELECT c.{column}, array_agg(DISTINCT {person}) FROM customers c WHERE {where}"
               f" GROUP BY c.{column} HAVING count(DISTINCT {person}) > 1")
        out.extend(Shared(rule, value, list(ids)) for value, ids in conn.execute(sql, params))
    return out


def channel_accounts(conn: psycopg.Connection, ids: Sequence[str]
                     ) -> dict[str, dict[str, set[str]]]:
    """``customer -> channel -> external ids`` for ``ids``."""
    out: dict[str, dict[str, set[str]]] = {}
    for cid, chan, ext in conn.execute(
            "SELECT customer_id, channel, external_id FROM customer_identities"
            " WHERE customer_id = ANY(%s)", (list(ids),)):
        out.setdefault(cid, {}).setdefault(chan, set()).add(ext)
    return out


def created_order(conn: psycopg.Connection, ids: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """``customer -> (created_at, customer_id)``: the order a rule picks survivors in."""
    return {cid: (at, cid) for cid, at in conn.execute(
        "SELECT customer_id, created_at FROM customers WHERE customer_id = ANY(%s)",
        (list(ids),))}


def undone_pairs(conn: psycopg.Connection, ids: Sequence[str]) -> set[frozenset[str]]:
    """Pairs (survivor, merged) of undone merges among ``ids``: rules never merge them again."""
    return {frozenset((s, m)) for s, m in conn.execute(
        "SELECT survivor_id, unnest(merged_ids) FROM customer_merges"
        " WHERE undone_at IS NOT NULL AND (survivor_id = ANY(%(i)s) OR merged_ids && %(i)s)",
        {"i": list(ids)})}


def add_candidates(conn: psycopg.Connection, rows: list[tuple[str, str, str, str]]) -> int:
    """Record (customer_a, customer_b, rule, channel) pairs for review; return how many new."""
    if not rows:
        return 0
    pairs = [(min(a, b), max(a, b), rule, chan) for a, b, rule, chan in rows]
    return conn.execute(
        "INSERT INTO identity_link_candidates (customer_a, customer_b, rule, channel)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
        " ON CONFLICT DO NOTHING",
        tuple(list(col) for col in zip(*pairs, strict=True))).rowcount


def candidates(conn: psycopg.Connection, limit: int = 100, customer_id: str | None = None
               ) -> list[dict[str, Any]]:
    """Pairs awaiting review, oldest first (or those naming ``customer_id``)."""
    where = "" if customer_id is None else " WHERE customer_a = %(c)s OR customer_b = %(c)s"
    return [{"customer_a": a, "customer_b": b, "rule": r, "channel": ch, "found_at": at}
            for a, b, r, ch, at in conn.execute(
                "SELECT customer_a, customer_b, rule, channel, found_at"
                " FROM identity_link_candidates" + where +
                " ORDER BY found_at, customer_a, customer_b LIMIT %(n)s",
                {"c": customer_id, "n": limit})]


# ---- phones -------------------------------------------------------------------------------

def phone_scheme(conn: psycopg.Connection) -> tuple[str | None, str] | None:
    """(country code, scheme) the stored phones were normalised with; None: never recorded."""
    row = conn.execute("SELECT country_code, scheme FROM phone_normalization").fetchone()
    return None if row is None else (row[0], row[1])


def renormalize_phones(conn: psycopg.Connection, normalize: Any, country_code: str | None,
                       scheme: str) -> int:
    """Rewrite every stored ``phone_normalized`` with ``normalize(phone)``; return rows changed.

    Streams the phones with a server-side cursor and writes changes back in batches.
    """
    changed = 0
    batch: list[tuple[str, str | None]] = []

    def flush() -> int:
        if not batch:
            return 0
        n = conn.execute(
            "UPDATE customers c SET phone_normalized = u.p FROM unnest(%s::text[], %s::text[])"
            " AS u(id, p) WHERE c.customer_id = u.id",
            ([i for i, _ in batch], [p for _, p in batch])).rowcount
        batch.clear()
        return n

    # A server-side cursor in the open transaction: memory stays flat however many phones.
    with conn.cursor(name="phones") as cur:
        cur.execute("SELECT customer_id, phone, phone_normalized FROM customers"
                    " WHERE phone IS NOT NULL")
        while rows := cur.fetchmany(20_000):
            for cid, phone, stored in rows:
                norm = normalize(phone, country_code)
                if norm is not None and norm != stored:
                    batch.append((cid, norm))
            changed += flush()
    conn.execute("INSERT INTO phone_normalization (country_code, scheme) VALUES (%s, %s)"
                 " ON CONFLICT (only_row) DO UPDATE SET country_code = EXCLUDED.country_code,"
                 " scheme = EXCLUDED.scheme, done_at = now()", (country_code, scheme))
    return changed
