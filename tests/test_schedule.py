"""Scheduled re-scoring: slots in CRM_TIMEZONE, the baseline, catch-up once, no double runs."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest

from crm_service.errors import ConfigError
from crm_service.platform import schedule
from crm_service.platform.config import load_settings
from tests.conftest import run_worker_until

SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_latest_slot_in_the_configured_zone():
    # 02:00 in Shanghai is 18:00 UTC the day before.
    assert schedule.latest_slot(utc(2026, 11, 21, 18, 0), "02:00", SHANGHAI) \
        == utc(2026, 11, 21, 18, 0)
    assert schedule.latest_slot(utc(2026, 11, 21, 17, 59), "02:00", SHANGHAI) \
        == utc(2026, 11, 20, 18, 0)
    assert schedule.latest_slot(utc(2026, 11, 22, 9, 0), "02:00", ZoneInfo("UTC")) \
        == utc(2026, 11, 22, 2, 0)


def test_daylight_saving_days():
    ny = ZoneInfo("America/New_York")
    # 2026-03-08: 02:00-03:00 does not exist; 02:30 moves forward by the gap (03:30 EDT).
    assert schedule.latest_slot(utc(2026, 3, 8, 12), "02:30", ny) == utc(2026, 3, 8, 7, 30)
    # 2026-11-01: 01:30 happens twice; the first (EDT) one counts.
    assert schedule.latest_slot(utc(2026, 11, 1, 12), "01:30", ny) == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize("raw", ["25:00", "2am", "02:60", "daily"])
def test_bad_schedule_is_refused(raw):
    with pytest.raises(ConfigError, match="CRM_SCORE_SCHEDULE"):
        load_settings({"CRM_SCORE_SCHEDULE": raw})


def test_schedule_setting():
    assert load_settings({}).score_schedule == "02:00"
    assert load_settings({"CRM_SCORE_SCHEDULE": "3:05"}).score_schedule == "03:05"
    assert load_settings({"CRM_SCORE_SCHEDULE": "off"}).score_schedule is None


def runs(conn):
    rows = conn.execute("SELECT id, status, as_of FROM scoring_runs ORDER BY id").fetchall()
    conn.commit()
    return rows


def test_baseline_then_one_run_per_slot_and_one_catch_up(conn, settings):
    s = dataclasses.replace(settings, timezone="Asia/Shanghai", score_schedule="02:00")
    # First sight of the schedule: recorded, nothing runs.
    assert schedule.tick(conn, s, utc(2026, 11, 20, 9, 0)) is None
    assert runs(conn) == []
    # The next slot (02:00 on the 21st in Shanghai) queues a run as of the 20th, once.
    run_id = schedule.tick(conn, s, utc(2026, 11, 20, 18, 0, 5))
    assert run_id is not None
    assert runs(conn) == [(run_id, "queued", date(2026, 11, 20))]
    assert schedule.tick(conn, s, utc(2026, 11, 20, 23, 0)) is None
    # Down for three days: on start, only the latest slot runs.
    later = schedule.tick(conn, s, utc(2026, 11, 24, 3, 0))
    assert [r[2] for r in runs(conn)] == [date(2026, 11, 20), date(2026, 11, 23)]
    assert later == runs(conn)[-1][0]
    assert schedule.tick(conn, s, utc(2026, 11, 24, 4, 0)) is None
    off = dataclasses.replace(s, score_schedule=None)
    assert schedule.tick(conn, off, utc(2026, 11, 30, 4, 0)) is None
    assert len(runs(conn)) == 2


def test_concurrent_workers_queue_a_slot_once(conn, settings, dsn):
    s = dataclasses.replace(settings, score_schedule="02:00")
    schedule.tick(conn, s, utc(2026, 11, 20, 9, 0))  # baseline
    results: list[int | None] = []
    barrier = threading.Barrier(6)

    def worker():
        with psycopg.connect(dsn) as c:
            barrier.wait()
            results.append(schedule.tick(c, s, utc(2026, 11, 21, 2, 0, 1)))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and sum(r is not None for r in results) == 1
    assert len(runs(conn)) == 1


def test_the_worker_runs_a_missed_slot_on_start(cdnow_loaded, settings, dsn):
    """The worker's loop ticks the schedule: a slot missed while it was down runs at start."""
    s = dataclasses.replace(settings, score_schedule="02:00")
    cdnow_loaded.execute("INSERT INTO schedule_slots (slot, note) VALUES (%s, 'baseline')",
                         (utc(2020, 1, 1, 2, 0),))
    cdnow_loaded.commit()
    run_worker_until(dsn, s, lambda: any(r[1] in ("succeeded", "failed")
                                         for r in runs(cdnow_loaded)))
    assert len(runs(cdnow_loaded)) == 1
    # CDNOW ends in 1998: a run as of yesterday would make the whole base dormant, so the
    # stale-date guard fails it with the reason, and nothing is published.
    assert runs(cdnow_loaded)[0][1] == "failed"
    error = cdnow_loaded.execute("SELECT error FROM scoring_runs").fetchone()[0]
    cdnow_loaded.commit()
    assert "newest paid order (1998-06-30)" in error and "CRM_MAX_STALE_DAYS" in error
