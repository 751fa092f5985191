"""Retention of scoring runs' score rows (SQL): whole partitions dropped, run records kept.

A published run keeps its score rows while it is among the newest ``CRM_KEEP_RUNS`` published
runs *and* finished less than ``CRM_KEEP_RUN_DAYS`` ago: a nightly schedule keeps a week of
runs, a weekly one five weeks. Two runs are never dropped: the live run, and the run the live
run's tier changes and events were computed against (its ``previous_run_id``). A retired run
keeps its record, counts, models, diagnostics and plots, and says since when its scores are
gone (``scores_retired_at``); tier history stays.

Dropping is ``DETACH PARTITION ... CONCURRENTLY`` (readers of the live run are never blocked;
it waits for readers of the old run to finish) and then ``DROP TABLE``: no ``DELETE``, no
vacuum debt. A detach interrupted half-way is finished on the next pass, and score tables left
behind by runs that died before publishing are dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from crm_service.platform.config import Settings
from crm_service.storage.scores import is_attached, score_tables
from crm_service.storage.summary import partition_name

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"^customer_scores_r(\d+)$")


@dataclass
class RetentionReport:
    """What one pass of retention did (``crm-service maintenance`` prints it)."""

    retired: list[int] = field(default_factory=list)
    orphans_dropped: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)  # due, but a reader held them: next pass
    busy: bool = False  # another pass was running: this one did nothing


def runs_to_retire(conn: psycopg.Connection, keep_runs: int, keep_days: int,
                   now: datetime | None = None) -> tuple[list[int], list[int]]:
    """(runs whose scores go, runs whose scores stay) among the published runs with scores."""
    rows = conn.execute(
        "WITH published AS ("
        "  SELECT id, finished_at, row_number() OVER (ORDER BY finished_at DESC, id DESC) AS k"
        "  FROM scoring_runs WHERE status = 'succeeded' AND NOT dry_run),"
        " protected AS ("
        "  SELECT r.id FROM scoring_state s JOIN scoring_runs r ON r.id = s.active_run_id"
        "  UNION SELECT r.previous_run_id FROM scoring_state s"
        "  JOIN scoring_runs r ON r.id = s.active_run_id WHERE r.previous_run_id IS NOT NULL)"
        " SELECT p.id, (p.k > %(keep)s OR p.finished_at < coalesce(%(now)s, now()) - %(days)s)"
        "   AND p.id NOT IN (SELECT id FROM protected)"
        " FROM published p JOIN scoring_runs r ON r.id = p.id"
        " WHERE r.scores_retired_at IS NULL ORDER BY p.id",
        {"keep": keep_runs, "days": timedelta(days=keep_days), "now": now}).fetchall()
    return [int(r[0]) for r in rows if r[1]], [int(r[0]) for r in rows if not r[1]]


# One pass at a time (the worker after a run, `crm-service score`, `maintenance`): a second
# pass would try to detach a partition whose detach the first has started.
_RETENTION_LOCK = 0x43524D5245544E  # "CRMRETN"


def apply_retention(conn: psycopg.Connection, settings: Settings,
                    now: datetime | None = None) -> RetentionReport:
    """Retire the score rows of runs past retention; drop leftovers of unpublished runs.

    ``conn`` must be idle: detaching concurrently runs outside a transaction. The pass has
    the run's statement bound (``CRM_RUN_STATEMENT_TIMEOUT_MS``), not the API's: a detach waits
    for every reader of the old run (a long CSV export, say). A partition that cannot be
    detached now is left for the next pass, which finishes it; the others go on.
    """
    report = RetentionReport()
    got = conn.execute("SELECT pg_try_advisory_lock(%s), current_setting('statement_timeout')",
                       (_RETENTION_LOCK,)).fetchone()
    conn.commit()
    if not got or not got[0]:
        report.busy = True
        return report
    saved = got[1]
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (str(settings.run_statement_timeout_ms),))
        conn.commit()
        _finish_pending_detaches(conn, report)
        retire, report.kept = runs_to_retire(conn, settings.keep_runs,
                                             settings.keep_run_days, now)
        conn.commit()
        for run_id in retire:
            try:
                _retire(conn, run_id)
            except psycopg.Error as exc:
                _reset(conn)
                report.deferred.append(run_id)
                log.warning("scoring run %s: score rows not retired now (%s); the next pass"
                            " retries", run_id, exc.diag.message_primary or exc)
                continue
            report.retired.append(run_id)
            log.info("scoring run %s: score rows retired (retention)", run_id)
        report.kept = sorted(set(report.kept) | set(report.deferred))
        report.orphans_dropped = _drop_orphans(conn)
    finally:
        _reset(conn)
        conn.execute("SELECT set_config('statement_timeout', %s, false),"
                     " pg_advisory_unlock(%s)", (saved, _RETENTION_LOCK))
        conn.commit()
    return report


def _reset(conn: psycopg.Connection) -> None:
    conn.autocommit = False
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def _autocommit(conn: psycopg.Connection, statement: sql.Composed) -> None:
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute(statement)
    finally:
        conn.autocommit = False


def _retire(conn: psycopg.Connection, run_id: int) -> None:
    name = partition_name(run_id)
    part = sql.Identifier(name)
    attached = is_attached(conn, name)
    conn.commit()
    if attached:
        _autocommit(conn, sql.SQL("ALTER TABLE customer_scores DETACH PARTITION {}"
                                  " CONCURRENTLY").format(part))
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(part))
        conn.execute("UPDATE scoring_runs SET scores_retired_at = now() WHERE id = %s",
                     (run_id,))


def _finish_pending_detaches(conn: psycopg.Connection, report: RetentionReport) -> None:
    """Finalize detaches that were interrupted (their partition is half-detached)."""
    pending = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'customer_scores'::regclass AND i.inhdetachpending").fetchall()]
    conn.commit()
    for name in pending:
        try:
            _autocommit(conn, sql.SQL("ALTER TABLE customer_scores DETACH PARTITION {}"
                                      " FINALIZE").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            _reset(conn)
            log.warning("%s: detach not finished now (%s); the next pass retries", name,
                        exc.diag.message_primary or exc)


def _drop_orphans(conn: psycopg.Connection) -> list[int]:
    """Drop detached score tables whose run is not running (it failed or died unpublished)."""
    names = [name for name in score_tables(conn) if not is_attached(conn, name)]
    conn.commit()
    candidates = {int(m.group(1)): name for name in names if (m := _PARTITION.match(name))}
    dropped = []
    for run_id, name in sorted(candidates.items()):
        with conn.transaction():
            status = conn.execute("SELECT status FROM scoring_runs WHERE id = %s FOR UPDATE",
                                  (run_id,)).fetchone()
            if status is not None and status[0] in ("running", "queued"):
                continue  # a run still writing its partition
            if is_attached(conn, name):
                continue  # published meanwhile
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            if status is not None and status[0] == "succeeded":
                conn.execute("UPDATE scoring_runs SET scores_retired_at = coalesce("
                             "scores_retired_at, now()) WHERE id = %s", (run_id,))
        dropped.append(run_id)
    return dropped
