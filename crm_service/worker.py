"""The background worker: runs queued scoring runs (``crm-service worker``).

The queue is the ``scoring_runs`` table itself: a worker claims the oldest queued run with
``FOR UPDATE SKIP LOCKED``, so several workers never take the same run, and a run is never lost
(it stays queued until claimed). In embedded mode ``serve`` starts one worker beside the API.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from crm_service import score_store
from crm_service.config import Settings
from crm_service.errors import CrmError
from crm_service.scoring import run_scoring

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


def process_one(conn: psycopg.Connection, settings: Settings) -> int | None:
    """Run the oldest queued scoring run, if any; return its id."""
    claimed = score_store.claim_queued_run(conn)
    if claimed is None:
        return None
    run_id, as_of = claimed
    try:
        run_scoring(conn, settings, as_of=as_of, run_id=run_id)
    except CrmError as exc:  # recorded on the run by run_scoring; keep serving
        log.warning("scoring run %s failed: %s", run_id, exc.detail)
    except Exception:  # also recorded on the run; a worker outlives one bad run
        log.exception("scoring run %s failed", run_id)
    return run_id


def run_worker(conn: psycopg.Connection, settings: Settings, *, poll_seconds: float = 2.0,
               stop: threading.Event | None = None) -> None:
    """Process queued runs until ``stop`` is set (or forever)."""
    stop = stop or threading.Event()
    log.info("worker started")
    while not stop.is_set():
        if process_one(conn, settings) is None:
            stop.wait(poll_seconds)
        else:
            time.sleep(0)  # look for the next run at once
