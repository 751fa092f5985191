"""SQL for customer profiles and channel identities: staged upsert, lookups."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from crm_service.customers.rules import Profile
from crm_service.storage.locks import lock_exclusive as lock_writers
from crm_service.storage.staging import MergeResult

__all__ = ["lock_writers", "merge_customers", "identity_owners", "add_identities"]

StagedCustomer = tuple[int, Profile]

_CREATE_STAGING = """
CREATE TEMP TABLE customer_staging (
    seq bigint NOT NULL, customer_id text COLLATE "C" NOT NULL,
    set_email boolean NOT NULL, email text, email_normalized text,
    set_phone boolean NOT NULL, phone text, phone_normalized text,
    set_name boolean NOT NULL, name text
) ON COMMIT DROP
"""

_COPY = (
    "COPY customer_staging (seq, customer_id, set_email, email, email_normalized, set_phone,"
    " phone, phone_normalized, set_name, name) FROM STDIN"
)

# Several records for one customer collapse into one change: each field takes its value from the
# last record that set it.
_COLLAPSE = """
CREATE TEMP TABLE customer_change ON COMMIT DROP AS
SELECT customer_id, min(seq) AS first_seq, max(seq) AS last_seq,
       bool_or(set_email) AS set_email,
       (array_agg(email ORDER BY seq DESC) FILTER (WHERE set_email))[1] AS email,
       (array_agg(email_normalized ORDER BY seq DESC) FILTER (WHERE set_email))[1]
           AS email_normalized,
       bool_or(set_phone) AS set_phone,
       (array_agg(phone ORDER BY seq DESC) FILTER (WHERE set_phone))[1] AS phone,
       (array_agg(phone_normalized ORDER BY seq DESC) FILTER (WHERE set_phone))[1]
           AS phone_normalized,
       bool_or(set_name) AS set_name,
       (array_agg(name ORDER BY seq DESC) FILTER (WHERE set_name))[1] AS name
FROM customer_staging GROUP BY customer_id
"""

# Existing rows are locked in key order first, so concurrent batches cannot deadlock.
_LOCK_EXISTING = """
SELECT 1 FROM customers c JOIN customer_change k USING (customer_id)
ORDER BY c.customer_id FOR UPDATE OF c
"""

_INSERT_NEW = """
INSERT INTO customers (customer_id, email, email_normalized, phone, phone_normalized, name)
SELECT customer_id, email, email_normalized, phone, phone_normalized, name
FROM customer_change ORDER BY customer_id
ON CONFLICT DO NOTHING
RETURNING customer_id
"""

# Fields the input did not name keep the stored row's *current* value (the UPDATE re-reads a
# row that changed while it waited for the lock), so a concurrent change is never undone.
_UPDATE_EXISTING = """
UPDATE customers c
   SET email = CASE WHEN k.set_email THEN k.email ELSE c.email END,
       email_normalized = CASE WHEN k.set_email THEN k.email_normalized
                               ELSE c.email_normalized END,
       phone = CASE WHEN k.set_phone THEN k.phone ELSE c.phone END,
       phone_normalized = CASE WHEN k.set_phone THEN k.phone_normalized
                               ELSE c.phone_normalized END,
       name = CASE WHEN k.set_name THEN k.name ELSE c.name END,
       updated_at = now()
  FROM customer_change k
 WHERE c.customer_id = k.customer_id
   AND NOT (c.customer_id = ANY(%(inserted)s::text[]))
   AND (CASE WHEN k.set_email THEN k.email ELSE c.email END,
        CASE WHEN k.set_phone THEN k.phone ELSE c.phone END,
        CASE WHEN k.set_name THEN k.name ELSE c.name END)
       IS DISTINCT FROM (c.email, c.phone, c.name)
RETURNING c.customer_id
"""


def merge_customers(
    conn: psycopg.Connection, rows: Iterable[StagedCustomer]
) -> MergeResult:
    """Stage profiles with COPY and upsert them in the caller's transaction.

    Per record: a new customer's first record is ``inserted``; a stored customer that changed
    has its last record ``updated``; all other records are duplicates.
    """
    result = MergeResult()
    with conn.cursor() as cur:
        cur.execute(_CREATE_STAGING)
        with cur.copy(_COPY) as copy:
            for seq, p in rows:
                copy.write_row((
                    seq, p.customer_id,
                    *p.column("email"), p.values.get("email_normalized"),
                    *p.column("phone"), p.values.get("phone_normalized"),
                    *p.column("name"),
                ))
                result.staged += 1
        if result.staged:
            cur.execute(_COLLAPSE)
            cur.execute(_LOCK_EXISTING)
            cur.execute(_INSERT_NEW)
            inserted = [r[0] for r in cur.fetchall()]
            cur.execute(_UPDATE_EXISTING, {"inserted": inserted})
            updated = [r[0] for r in cur.fetchall()]
            cur.execute(
                "SELECT first_seq, 'inserted' FROM customer_change"
                " WHERE customer_id = ANY(%(i)s::text[])"
                " UNION ALL SELECT last_seq, 'updated' FROM customer_change"
                " WHERE customer_id = ANY(%(u)s::text[])",
                {"i": inserted, "u": updated})
            result.record_outcomes(cur.fetchall())
            cur.execute("DROP TABLE customer_change")
        cur.execute("DROP TABLE customer_staging")
    return result


def identity_owners(
    conn: psycopg.Connection, identities: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The customer each known (channel, external_id) belongs to.

    Each identity is first locked (a transaction-scoped advisory lock on its hash, taken in a
    fixed order), so two batches claiming the same identity run one after the other and the
    second sees the first's claim.
    """
    if not identities:
        return {}
    conn.execute(
        "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT"
        " hashtextextended(c || '/' || e, 0) AS k"
        " FROM unnest(%s::text[], %s::text[]) AS q(c, e) ORDER BY 1) locks",
        ([c for c, _ in identities], [e for _, e in identities]),
    ).fetchall()
    rows = conn.execute(
        "SELECT i.channel, i.external_id, i.customer_id FROM customer_identities i"
        " JOIN unnest(%s::text[], %s::text[]) AS q(channel, external_id)"
        " USING (channel, external_id)",
        ([c for c, _ in identities], [e for _, e in identities]),
    ).fetchall()
    return {(c, e): cid for c, e, cid in rows}


def add_identities(conn: psycopg.Connection, links: list[tuple[str, str, str]]) -> int:
    """Link (channel, external_id, customer_id); return how many links were new."""
    if not links:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO customer_identities (channel, external_id, customer_id)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])"
            " ON CONFLICT DO NOTHING",
            ([c for c, _, _ in links], [e for _, e, _ in links], [k for _, _, k in links]),
        )
        return cur.rowcount


def ids_without_email(conn: psycopg.Connection, prefix: str) -> list[str]:
    """Customer ids starting with ``prefix`` whose profile has no email yet, in id order."""
    return [r[0] for r in conn.execute(
        "SELECT customer_id FROM customers WHERE starts_with(customer_id, %s)"
        " AND email IS NULL ORDER BY customer_id", (prefix,)).fetchall()]
