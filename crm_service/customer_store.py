"""SQL for customer profiles and channel identities: staged upsert, lookups."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from crm_service.customers import Profile
from crm_service.staging import MergeResult

StagedCustomer = tuple[int, Profile]

_COLUMNS = ("email", "email_normalized", "phone", "phone_normalized", "name")

_CREATE_STAGING = """
CREATE TEMP TABLE customer_staging (
    seq bigint NOT NULL, customer_id text NOT NULL,
    set_email boolean NOT NULL, email text, email_normalized text,
    set_phone boolean NOT NULL, phone text, phone_normalized text,
    set_name boolean NOT NULL, name text,
    pass integer NOT NULL DEFAULT 1
) ON COMMIT DROP
"""

_COPY = (
    "COPY customer_staging (seq, customer_id, set_email, email, email_normalized, set_phone,"
    " phone, phone_normalized, set_name, name) FROM STDIN"
)

_NUMBER_PASSES = """
UPDATE customer_staging s SET pass = d.rn
FROM (
    SELECT seq, row_number() OVER (PARTITION BY customer_id ORDER BY seq) AS rn
    FROM customer_staging
    WHERE customer_id IN (SELECT customer_id FROM customer_staging GROUP BY 1 HAVING count(*) > 1)
) d
WHERE s.seq = d.seq AND d.rn > 1
"""

# Fields not named in the input keep their stored value (LEFT JOIN on the current row).
_UPSERT = """
WITH up AS (
    INSERT INTO customers AS c
        (customer_id, email, email_normalized, phone, phone_normalized, name)
    SELECT s.customer_id,
           CASE WHEN s.set_email THEN s.email ELSE e.email END,
           CASE WHEN s.set_email THEN s.email_normalized ELSE e.email_normalized END,
           CASE WHEN s.set_phone THEN s.phone ELSE e.phone END,
           CASE WHEN s.set_phone THEN s.phone_normalized ELSE e.phone_normalized END,
           CASE WHEN s.set_name THEN s.name ELSE e.name END
    FROM customer_staging s LEFT JOIN customers e ON e.customer_id = s.customer_id
    WHERE s.pass = %(pass)s
    ON CONFLICT (customer_id) DO UPDATE
        SET email = EXCLUDED.email, email_normalized = EXCLUDED.email_normalized,
            phone = EXCLUDED.phone, phone_normalized = EXCLUDED.phone_normalized,
            name = EXCLUDED.name, updated_at = now()
        WHERE (c.email, c.phone, c.name) IS DISTINCT FROM (EXCLUDED.email, EXCLUDED.phone,
                                                           EXCLUDED.name)
    RETURNING c.customer_id, (c.xmax = 0) AS inserted
)
SELECT s.seq, up.inserted FROM up
JOIN customer_staging s ON s.customer_id = up.customer_id AND s.pass = %(pass)s
"""


def merge_customers(
    conn: psycopg.Connection, rows: Iterable[StagedCustomer]
) -> MergeResult:
    """Stage profiles with COPY and upsert them in the caller's transaction."""
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
            cur.execute(_NUMBER_PASSES)
            cur.execute("SELECT max(pass) FROM customer_staging")
            passes = cur.fetchone()[0]  # type: ignore[index]
            for n in range(1, passes + 1):
                cur.execute(_UPSERT, {"pass": n})
                result.record(cur.fetchall())
        cur.execute("DROP TABLE customer_staging")
    return result


def identity_owners(
    conn: psycopg.Connection, identities: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The customer each known (channel, external_id) belongs to."""
    if not identities:
        return {}
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
