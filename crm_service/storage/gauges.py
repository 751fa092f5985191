"""What the metrics read from PostgreSQL at scrape (SQL): runs, the live run, webhook queues.

One short read-only transaction with a 5 s statement timeout, so a scrape never holds anything
up; :mod:`crm_service.platform.metrics` turns the record into Prometheus families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

_RUNS = "SELECT status, dry_run, count(*) FROM scoring_runs GROUP BY status, dry_run"
_LAST_PUBLISHED = """
SELECT counts -> 'stage_seconds', extract(epoch FROM finished_at)::float8,
       extract(epoch FROM finished_at - started_at)::float8
FROM scoring_runs WHERE status = 'succeeded' AND NOT dry_run AND finished_at IS NOT NULL
ORDER BY id DESC LIMIT 1
"""
_LIVE = """
SELECT r.id, extract(epoch FROM r.as_of::timestamp)::float8, (r.counts ->> 'customers')::bigint,
       r.counts -> 'tiers', r.counts -> 'churn_risk'
FROM scoring_state s JOIN scoring_runs r ON r.id = s.active_run_id
"""
_QUEUE = """
SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
       (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM webhook_deliveries
        WHERE status = 'pending'),
       (SELECT count(*) FROM events
        WHERE id > (SELECT min(event_cursor) FROM webhooks WHERE status = 'active')),
       (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM events
        WHERE id > (SELECT min(event_cursor) FROM webhooks WHERE status = 'active'))
"""
_HOOKS = "SELECT status, count(*) FROM webhooks GROUP BY status"


@dataclass(frozen=True)
class DatabaseGauges:
    """The database's side of ``/metrics``."""

    runs: list[tuple[str, bool, int]]  # (status, dry_run, count)
    last_published: tuple[dict[str, Any] | None, float, float | None] | None
    live: tuple[int, float, int | None, dict[str, int] | None, dict[str, int] | None] | None
    queue: tuple[int, float | None, int, float | None] | None
    hooks: list[tuple[str, int]]  # (status, count)


def read_gauges(conn: psycopg.Connection) -> DatabaseGauges:
    """Read every database gauge in one short read-only transaction."""
    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = '5s'")
        conn.execute("SET TRANSACTION READ ONLY")
        return DatabaseGauges(
            runs=conn.execute(_RUNS).fetchall(),
            last_published=conn.execute(_LAST_PUBLISHED).fetchone(),
            live=conn.execute(_LIVE).fetchone(),
            queue=conn.execute(_QUEUE).fetchone(),
            hooks=conn.execute(_HOOKS).fetchall())
