"""Score tables (SQL): which run partitions exist, whether attached, and per-customer deletes.

One table per run (``customer_scores_r<id>``), attached to ``customer_scores`` when published.
Plain psycopg, no numpy: erasure and retention use it without loading the scoring run.
"""

from __future__ import annotations

import psycopg
from psycopg import sql


def is_attached(conn: psycopg.Connection, name: str) -> bool:
    """Whether score table ``name`` is a partition of ``customer_scores`` (or half-detached)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_inherits"
                       " WHERE inhrelid = to_regclass(%s))", (name,)).fetchone()
    return bool(row and row[0])


def score_tables(conn: psycopg.Connection) -> list[str]:
    """Every run's score table, attached, half-detached or never attached."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        " AND c.relname ~ '^customer_scores_r[0-9]+$' ORDER BY c.relname").fetchall()]


def erase_customer_scores(conn: psycopg.Connection, customer_id: str) -> int:
    """Delete a customer's rows from every score table; return how many went.

    Table by table rather than through the parent: a partition whose detach is pending, or a
    run's table not attached yet, is not reached through ``customer_scores``. The caller holds
    the ``scoring_state`` lock, so no run publishes meanwhile.
    """
    removed = 0
    for name in score_tables(conn):
        removed += conn.execute(sql.SQL("DELETE FROM {} WHERE customer_id = %s").format(
            sql.Identifier(name)), (customer_id,)).rowcount
    return removed
