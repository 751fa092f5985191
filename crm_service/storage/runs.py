"""Scoring-run records: the queue, ownership, progress and the run's end (SQL).

The queue is the ``scoring_runs`` table itself. A running run's session holds the advisory lock
(:data:`RUN_OWNER_LOCK`, run id), taken in the transaction that marks it running. PostgreSQL
releases it when that session ends, however it ends (kill -9, crash, lost connection), so
"running, lock free" means the process died.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from crm_service.errors import CrmError

RUN_OWNER_LOCK = 0x43524D  # the two-int advisory lock space; other locks use one bigint
DIED = ("the process running it stopped before it finished (killed, crashed or lost the "
        "database); nothing of it was published and the previous run stays live")


def _own(conn: psycopg.Connection, run_id: int) -> None:
    conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (RUN_OWNER_LOCK, run_id))


def release_run(conn: psycopg.Connection, run_id: int) -> None:
    """Give up this session's ownership of ``run_id`` (after it finished, either way)."""
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", (RUN_OWNER_LOCK, run_id))
        conn.commit()


RUN_STATUSES = ("queued", "running", "succeeded", "failed")


def fail_dead_runs(conn: psycopg.Connection) -> list[int]:
    """Mark failed every run still ``running`` whose owning session is gone; return their ids.

    Workers call this when they start and between runs, and ``crm-service score`` before it
    starts, so a killed run is marked failed on the next start instead of looking alive.
    """
    with conn.transaction():
        running = [int(r[0]) for r in conn.execute(
            "SELECT id FROM scoring_runs WHERE status = 'running' ORDER BY id"
            " FOR UPDATE SKIP LOCKED").fetchall()]
        dead = [run_id for run_id in running if conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s::int, %s::int)",
            (RUN_OWNER_LOCK, run_id)).fetchone()[0]]  # type: ignore[index]
        if dead:
            conn.execute("UPDATE scoring_runs SET status = 'failed', error = %s,"
                         " finished_at = now(), progress = NULL WHERE id = ANY(%s)", (DIED, dead))
    return dead


def create_run(conn: psycopg.Connection, as_of: date, timezone: str, *,
               status: str = "running", churn_horizon_days: int = 90, dry_run: bool = False,
               allow_stale: bool = False) -> int:
    """Record a new run (running and owned by this session, or queued); committed at once."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO scoring_runs (status, as_of, timezone, started_at, heartbeat_at,"
            " churn_horizon_days, dry_run, allow_stale) VALUES (%s, %s, %s,"
            " CASE WHEN %s = 'running' THEN now() END, now(), %s, %s, %s) RETURNING id",
            (status, as_of, timezone, status, churn_horizon_days, dry_run,
             allow_stale)).fetchone()
        assert row is not None
        if status == "running":
            _own(conn, int(row[0]))
    return int(row[0])


class RunTakenOverError(CrmError):
    """The run is no longer this attempt's (marked failed or finished by someone else)."""

    title = "Run taken over"


def claim_queued_run(conn: psycopg.Connection) -> tuple[int, date, int] | None:
    """Take the oldest queued run for this worker (SKIP LOCKED: workers never share a run).

    The run is owned by this session from the claim on (see :data:`RUN_OWNER_LOCK`); if the
    process dies, :func:`fail_dead_runs` marks it failed.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE scoring_runs SET status = 'running', started_at = now(), heartbeat_at = now(),"
            " progress = 'starting', attempt = attempt + 1 WHERE id = (SELECT id FROM scoring_runs"
            " WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)"
            " RETURNING id, as_of, attempt").fetchone()
        if row:
            _own(conn, int(row[0]))
    return (int(row[0]), row[1], int(row[2])) if row else None


def set_progress(conn: psycopg.Connection, run_id: int, attempt: int, stage: str) -> None:
    """Record the stage a run has reached (readable while it runs); also its heartbeat.

    Raises
    ------
    RunTakenOverError
        If another worker has claimed the run since this attempt started.
    """
    with conn.transaction():
        cur = conn.execute(
            "UPDATE scoring_runs SET progress = %s, heartbeat_at = now()"
            " WHERE id = %s AND attempt = %s AND status = 'running'", (stage, run_id, attempt))
        if cur.rowcount == 0:
            raise RunTakenOverError(f"scoring run {run_id} was taken over by another worker")


def fail_run(conn: psycopg.Connection, run_id: int, attempt: int, reason: str) -> bool:
    """Mark this attempt's run failed with its reason; the live run is untouched.

    Does nothing, and returns False, if the run is no longer this attempt's (taken over, or
    already finished).
    """
    with conn.transaction():
        cur = conn.execute("UPDATE scoring_runs SET status = 'failed', error = %s,"
                           " finished_at = now() WHERE id = %s AND attempt = %s"
                           " AND status = 'running'", (reason, run_id, attempt))
    return cur.rowcount == 1


def record_stage_seconds(conn: psycopg.Connection, run_id: int,
                         stages: dict[str, float]) -> None:
    """Store a finished run's stage timings (publishing's own included); committed."""
    with conn.transaction():
        conn.execute("UPDATE scoring_runs SET counts = jsonb_set(counts, '{stage_seconds}', %s)"
                     " WHERE id = %s AND counts IS NOT NULL", (json.dumps(stages), run_id))


_RECORD = ("id AS run_id, status, dry_run, allow_stale, progress, as_of, time_unit, timezone,"
           " churn_horizon_days, created_at, started_at, finished_at, error, counts, models,"
           " previous_run_id, scores_retired_at")


def _record(cur: psycopg.Cursor) -> dict[str, Any] | None:
    row = cur.fetchone()
    if row is None:
        return None
    return {d.name: v for d, v in zip(cur.description or (), row, strict=True)}


def run_record(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """One run's record by id (``scores_retired_at`` set once retention dropped its scores)."""
    return _record(conn.execute(f"SELECT {_RECORD} FROM scoring_runs WHERE id = %s",
                                (run_id,)))


def active_run(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The live run's record, or None before the first successful run."""
    return _record(conn.execute(
        f"SELECT {_RECORD} FROM scoring_runs"
        " WHERE id = (SELECT active_run_id FROM scoring_state)"))


# The run list (the API's and the console's): what an operator scans for, without each run's
# full model JSON.
_LISTED = """
SELECT r.id, r.status, r.dry_run, r.progress, r.as_of, r.created_at, r.started_at,
       r.finished_at, r.error, r.churn_horizon_days, r.previous_run_id, r.scores_retired_at,
       r.tier_policy_version,
       r.id = s.active_run_id AS live,
       (r.counts ->> 'customers')::bigint AS customers,
       r.counts -> 'stage_seconds' AS stage_seconds,
       r.counts -> 'dry_run' AS dry_run_report,
       r.models ->> 'selected' AS selected_model,
       (r.models -> (r.models ->> 'selected') -> 'holdout' ->> 'mae')::float8 AS holdout_mae,
       r.models -> 'churn' AS churn
FROM scoring_runs r LEFT JOIN scoring_state s ON true
WHERE (%(status)s::text IS NULL OR r.status = %(status)s)
  AND (%(dry_run)s::boolean IS NULL OR r.dry_run = %(dry_run)s)
  AND (%(before)s::bigint IS NULL OR r.id < %(before)s)
ORDER BY r.id DESC
LIMIT %(limit)s
"""


def list_runs(conn: psycopg.Connection, *, status: str | None = None,
              dry_run: bool | None = None, before: int | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """Runs newest first (ids below ``before``), at most ``limit``, as summary rows."""
    cur = conn.execute(_LISTED, {"status": status, "dry_run": dry_run, "before": before,
                                 "limit": limit})
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@dataclass(frozen=True)
class LiveRun:
    """The published run the scores come from."""

    run_id: int
    as_of: date
    scored_at: datetime | None
    churn_horizon_days: int
    counts: dict[str, Any]
    models: dict[str, Any]
    has_diagnostics: bool
    customers: int | None


def live_run(conn: psycopg.Connection) -> LiveRun | None:
    """The live run's record, or None before the first publish."""
    with conn.cursor(row_factory=class_row(LiveRun)) as cur:
        return cur.execute(
            "SELECT r.id AS run_id, r.as_of, r.finished_at AS scored_at, r.churn_horizon_days,"
            " coalesce(r.counts, '{}') AS counts, coalesce(r.models, '{}') AS models,"
            " r.diagnostics IS NOT NULL AS has_diagnostics,"
            " (r.counts ->> 'customers')::bigint AS customers"
            " FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
