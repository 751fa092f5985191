"""The background worker (``crm-service worker``): scoring runs, the schedule, webhooks.

- Scoring: the queue is the ``scoring_runs`` table itself: a worker claims the oldest queued run
  with ``FOR UPDATE SKIP LOCKED``, so several workers never take the same run, and a run is
  never lost (it stays queued until claimed).
- The schedule (:mod:`crm_service.platform.schedule`) queues the daily run.
- Webhook delivery (:mod:`crm_service.triggers.delivery`) runs in its own threads, so a slow
  receiver never holds up scoring.
- Housekeeping (:mod:`crm_service.storage.housekeeping`): the operational tables' retention, at
  start and every ``CRM_MAINTENANCE_INTERVAL_MINUTES``.

In embedded mode ``serve`` starts one worker beside the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from crm_service.errors import CrmError, DatabaseUnavailableError, RunAlreadyPublishedError
from crm_service.platform import schedule
from crm_service.platform.config import Settings
from crm_service.platform.db import DatabaseError
from crm_service.scoring import run_scoring
from crm_service.storage import housekeeping, runs

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


def process_one(conn: psycopg.Connection, settings: Settings) -> int | None:
    """Run the oldest queued scoring run, if any; return its id."""
    claimed = runs.claim_queued_run(conn)
    if claimed is None:
        return None
    run_id, as_of, attempt = claimed
    try:
        run_scoring(conn, settings, as_of=as_of, run_id=run_id, attempt=attempt)
    except runs.RunTakenOverError:
        log.warning("scoring run %s was taken over by another worker; dropped", run_id)
    except RunAlreadyPublishedError:  # a bug, not bad data: keep the stack
        log.exception("scoring run %s was published already", run_id)
    except CrmError as exc:  # recorded on the run by run_scoring; keep serving
        log.warning("scoring run %s failed: %s", run_id, exc.detail)
    except DatabaseError:
        raise  # the connection is suspect: let run_worker reconnect
    except Exception:  # also recorded on the run; a worker outlives one bad run
        log.exception("scoring run %s failed", run_id)
    return run_id


def housekeep(conn: psycopg.Connection, settings: Settings) -> None:
    """One retention pass over the operational tables (:mod:`crm_service.storage.housekeeping`).

    A failure is logged and the pass left for the next interval (the connection is reset if
    the failure left it in a transaction); a lost database is the loop's to handle.
    """
    try:
        report = housekeeping.apply(conn, settings)
    except DatabaseUnavailableError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a statement timeout on a first pass over a backlog
        log.exception("housekeeping pass failed; the next one is in %s minutes",
                      settings.maintenance_interval_minutes)
        if not conn.closed:
            conn.rollback()
        return
    if report.busy:
        return
    gone = {k: v for k, v in report.deleted.items() if v}
    if gone:
        log.info("housekeeping deleted %s", ", ".join(f"{v} {k}" for k, v in gone.items()))
    for held in report.held_by_webhooks:
        log.warning("webhook %s (%s) holds %s events past the event retention window (oldest "
                    "%s): they are kept until it receives them, or until it is deleted",
                    held["webhook_id"], held["status"], held["events"], held["oldest"])


def run_worker(connect: Callable[[], psycopg.Connection], settings: Settings, *,
               poll_seconds: float = 2.0, stop: threading.Event | None = None,
               webhooks: bool = True) -> None:
    """Process queued runs and the schedule until ``stop`` is set (or forever).

    Survives the database going away: on a database error the connection is dropped and a new
    one is made after a pause, so a PostgreSQL restart does not leave runs queued forever.
    """
    from crm_service.platform import secretbox
    from crm_service.triggers.delivery import Dispatcher

    secretbox.server_key(settings)  # webhooks and erasure need it: fail at start, not later
    stop = stop or threading.Event()
    log.info("worker started (schedule: %s %s)", settings.score_schedule or "off",
             settings.timezone)
    dispatcher = Dispatcher(connect, settings).start() if webhooks else None
    conn: psycopg.Connection | None = None
    next_housekeeping = 0.0  # a pass at start, then every CRM_MAINTENANCE_INTERVAL_MINUTES
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = connect()
            for run_id in runs.fail_dead_runs(conn):
                log.warning("scoring run %s was left running by a process that died; marked "
                            "failed (the previous run stays live)", run_id)
            schedule.tick(conn, settings)
            if time.monotonic() >= next_housekeeping:
                # Due again after the interval even if this pass fails: a failing pass must
                # never keep the worker from its runs.
                next_housekeeping = time.monotonic() + 60 * settings.maintenance_interval_minutes
                housekeep(conn, settings)
            if process_one(conn, settings) is None:
                stop.wait(poll_seconds)
        except (DatabaseError, DatabaseUnavailableError) as exc:
            log.warning("worker lost the database (%s); retrying in %.0f s", exc, poll_seconds)
            if conn is not None:
                conn.close()
            conn = None
            stop.wait(max(poll_seconds, 1.0))
    if conn is not None:
        conn.close()
    if dispatcher is not None:
        dispatcher.stop()
