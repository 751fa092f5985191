"""Scheduled re-scoring: a daily run at ``CRM_SCORE_SCHEDULE`` (02:00) in ``CRM_TIMEZONE``.

The worker calls :func:`tick` every few seconds. A slot is the latest scheduled moment at or
before now; its run scores as of the day before the slot (the last complete day). The slot's
row in ``schedule_slots`` is inserted in the same transaction that queues the run, and the
slot is its primary key, so however many workers tick, one queues it.

A worker that was down over several slots queues only the latest one when it starts ("a missed
schedule runs once"). The schedule counts from the first time a worker saw it: on a new
database the current slot is recorded as the baseline without a run, so installing the service
in the afternoon does not score at once (run ``crm-service score`` for that).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from crm_service.platform.config import Settings
from crm_service.storage import runs
from crm_service.storage import schedule_slots as slots

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


def latest_slot(now: datetime, at: str, zone: ZoneInfo) -> datetime:
    """The latest daily ``at`` (HH:MM local) at or before ``now``, as an aware UTC datetime.

    A local time that a DST change skips moves forward by the gap (02:30 becomes 03:30);
    a repeated local time runs once (its first occurrence).
    """
    hh, mm = (int(p) for p in at.split(":"))
    local_now = now.astimezone(zone)
    day = local_now.date()
    for d in (day, day - timedelta(days=1)):
        slot = _local(d, hh, mm, zone)
        if slot <= now:
            return slot
    raise AssertionError("unreachable")


def _local(d: date, hh: int, mm: int, zone: ZoneInfo) -> datetime:
    naive = datetime.combine(d, time(hh, mm))
    first = naive.replace(tzinfo=zone, fold=0)
    # fold=0 reads a skipped time with the offset before the change: shifted by the gap.
    return first.astimezone(UTC)


def tick(conn: psycopg.Connection, settings: Settings, now: datetime | None = None
         ) -> int | None:
    """Queue the current slot's run if no worker has yet; return its run id."""
    if settings.score_schedule is None:
        return None
    now = now or datetime.now(UTC)
    slot = latest_slot(now, settings.score_schedule, settings.zone)
    with conn.transaction():
        slots.lock_slots(conn)
        if slots.slot_taken(conn, slot):
            return None
        if slots.no_slot_yet(conn):
            slots.record_slot(conn, slot, "schedule started; the next slot runs")
            log.info("score schedule %s %s starts; next run after the next slot",
                     settings.score_schedule, settings.timezone)
            return None
        as_of = slot.astimezone(settings.zone).date() - timedelta(days=1)
        run_id = runs.create_run(conn, as_of, settings.timezone, status="queued",
                                 churn_horizon_days=settings.churn_horizon_days)
        slots.record_slot(conn, slot, "queued", run_id)
    log.info("scheduled scoring run %s queued as of %s (slot %s)", run_id, as_of,
             slot.isoformat())
    return run_id
