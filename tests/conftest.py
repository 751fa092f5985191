"""Fixtures: one real PostgreSQL (the embedded one, or TEST_DATABASE_URL) for the whole run.

Each test starts from empty tables (TRUNCATE), so tests are independent and order-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from crm_service.access import api_keys
from crm_service.platform import schema
from crm_service.platform.config import Settings, load_settings
from crm_service.platform.embedded import ensure_database, start_embedded, with_database

TABLES = ("idempotency_records, customer_identities, orders, customers, api_keys, customer_scores,"
          " tier_transitions, events, webhooks, webhook_deliveries, webhook_attempts,"
          " schedule_slots, erased_customers, console_sessions, customer_merges,"
          " customer_merge_orders, customer_merge_identities, identity_link_candidates")
# A fixed server key (the tests run with DATABASE_URL, where CRM_SECRET_KEY is required).
TEST_SECRET_KEY = "dGVzdC1zZXJ2ZXIta2V5LW9mLTMyLWJ5dGVzLWxvbmc="


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DSN of the test server's maintenance database."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        return external
    data_dir = tmp_path_factory.mktemp("crm-data")
    return with_database(start_embedded(data_dir), "postgres")


@pytest.fixture(scope="session")
def dsn(server_dsn: str) -> str:
    """A migrated test database."""
    ensure_database(server_dsn, "crm_test")
    url = with_database(server_dsn, "crm_test")
    schema.upgrade(url)
    return url


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, dsn: str) -> Settings:
    """Settings as a deployment with DATABASE_URL would have them."""
    return load_settings({"DATABASE_URL": dsn,
                          "CRM_DATA_DIR": str(tmp_path_factory.mktemp("data")),
                          "CRM_POOL_MIN_SIZE": "1", "CRM_POOL_MAX_SIZE": "4",
                          "CRM_AUTH_CACHE_SECONDS": "1", "CRM_SECRET_KEY": TEST_SECRET_KEY,
                          "CRM_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
                          "CRM_RATE_LIMIT_PER_SECOND": "0"})


@pytest.fixture()
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """A connection to an emptied database."""
    with psycopg.connect(dsn) as c:
        c.execute("UPDATE scoring_state SET active_run_id = NULL")
        drop_score_partitions(c)
        c.execute(f"TRUNCATE {TABLES}")
        c.execute("DELETE FROM scoring_runs")  # referenced by scoring_state: no TRUNCATE
        c.execute("DELETE FROM tier_policies")  # referenced by scoring_runs
        c.commit()
        yield c


def drop_score_partitions(c: psycopg.Connection) -> None:
    """Drop every run's score table (attached or not): runs do not outlive a test."""
    names = [r[0] for r in c.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r'"
        " AND relname ~ '^customer_scores_r[0-9]+$'").fetchall()]
    if names:
        c.execute("DROP TABLE " + ", ".join(f'"{n}"' for n in names))


@pytest.fixture(scope="session")
def app(settings: Settings, dsn: str):
    from api import create_app

    return create_app(settings, dsn=dsn)


@pytest.fixture()
def client(app, conn):
    return app.test_client()


@pytest.fixture()
def cdnow_loaded(conn: psycopg.Connection, settings: Settings) -> psycopg.Connection:
    """The CDNOW demo sample (2,357 customers) loaded through the bulk import."""
    from crm_service.platform.demo import load_cdnow_sample

    load_cdnow_sample(conn, settings)
    conn.commit()
    return conn


@pytest.fixture()
def make_token(conn: psycopg.Connection):
    def make(*scopes: str) -> str:
        _, token = api_keys.create_key(conn, "test", list(scopes) or ["admin"])
        conn.commit()
        return token

    return make


@pytest.fixture()
def auth(make_token) -> dict[str, str]:
    """Headers of an admin key."""
    return {"Authorization": f"Bearer {make_token('admin')}"}


@pytest.fixture()
def cli_env(dsn: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for CLI runs against the test database."""
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("CRM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CRM_SECRET_KEY", TEST_SECRET_KEY)
    return {"DATABASE_URL": dsn, "CRM_DATA_DIR": str(settings.data_dir),
            "CRM_SECRET_KEY": TEST_SECRET_KEY}


def q(conn: psycopg.Connection, sql: str, *params) -> list[tuple]:
    """All rows of ``sql``; the transaction is ended, so later reads see new commits."""
    rows = conn.execute(sql, params).fetchall()
    conn.commit()
    return rows


def count(conn: psycopg.Connection, sql: str, *params) -> int:
    row = conn.execute(sql, params).fetchone()
    conn.commit()
    return int(row[0])


def run_worker_until(dsn: str, settings: Settings, done, *, seconds: float = 60) -> None:
    """Run the worker loop in a thread (no webhook delivery) until ``done()`` or ``seconds``."""
    import threading

    from crm_service.platform.worker import run_worker

    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(lambda: psycopg.connect(dsn), settings),
                              kwargs={"poll_seconds": 0.1, "stop": stop, "webhooks": False})
    worker.start()
    try:
        for _ in range(int(seconds / 0.1)):
            if done():
                break
            stop.wait(0.1)
    finally:
        stop.set()
        worker.join(timeout=60)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``rep_call``), for screenshots on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
