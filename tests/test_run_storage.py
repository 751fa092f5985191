"""Per-run score partitions, publishing, retention, the run's own statement timeout, and the
upgrade of a database made by the previous release's schema."""

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from yoyo import get_backend

from crm_service.cli import main
from crm_service.platform import schema
from crm_service.scoring import run
from crm_service.scoring.run import run_scoring
from crm_service.storage import retention, runs
from crm_service.storage import score_reads as reads
from tests.conftest import count, q
from tests.test_schema import _fresh_db


def partitions(conn):
    """(run id, attached) of every score table."""
    rows = q(conn, "SELECT c.relname, c.relispartition FROM pg_class c WHERE c.relkind = 'r'"
                   " AND c.relname ~ '^customer_scores_r[0-9]+$'")
    return sorted((int(name.rsplit("r", 1)[1]), attached) for name, attached in rows)


def days(n):
    return [date(1998, 6, 30) - timedelta(days=k) for k in reversed(range(n))]


def test_each_run_has_its_own_partition_and_readers_see_the_live_one(cdnow_loaded, settings):
    a = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 1)).run_id
    b = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30)).run_id
    assert q(cdnow_loaded, "SELECT relkind FROM pg_class WHERE relname = 'customer_scores'") \
        == [("p",)]
    assert partitions(cdnow_loaded) == [(a, True), (b, True)]
    assert count(cdnow_loaded, f"SELECT count(*) FROM customer_scores_r{b}") == 2357
    assert count(cdnow_loaded, "SELECT count(DISTINCT run_id) FROM customer_scores") == 2
    assert runs.run_record(cdnow_loaded, b)["previous_run_id"] == a
    found = reads.customer_scores(cdnow_loaded, "cdnow-0042")
    assert found["run_id"] == b and found["scores"]["customer_id"] == "cdnow-0042"
    # A lookup of one customer never scans a partition: it is pruned (the run id known) or
    # probed by its customer-led key (the run id from a join).
    for query in ("SELECT * FROM customer_scores s JOIN scoring_state st"
                  " ON s.run_id = st.active_run_id WHERE s.customer_id = 'cdnow-0042'",
                  "SELECT * FROM customer_scores s WHERE s.customer_id = 'cdnow-0042'"
                  " AND s.run_id = (SELECT active_run_id FROM scoring_state)"):
        plan = "\n".join(r[0] for r in q(cdnow_loaded, "EXPLAIN (ANALYZE, COSTS OFF) " + query))
        assert "Seq Scan on customer_scores" not in plan, plan
    plan = "\n".join(r[0] for r in q(cdnow_loaded, "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM"
                                    " customer_scores s WHERE s.customer_id = 'cdnow-0042'"
                                    " AND s.run_id = (SELECT active_run_id FROM scoring_state)"))
    assert f"customer_scores_r{a} s_1 (never executed)" in plan, plan


def test_a_failed_run_leaves_no_score_table_and_publishes_nothing(cdnow_loaded, settings,
                                                                   monkeypatch):
    live = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30)).run_id

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away mid-publish")

    monkeypatch.setattr(run.publishing, "publish", broken)
    with pytest.raises(RuntimeError, match="went away"):
        run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 29))
    assert partitions(cdnow_loaded) == [(live, True)]
    assert count(cdnow_loaded, "SELECT active_run_id FROM scoring_state") == live
    assert q(cdnow_loaded, "SELECT status FROM scoring_runs ORDER BY id DESC LIMIT 1") \
        == [("failed",)]
    # The session's working tables are gone too.
    assert count(cdnow_loaded, "SELECT count(*) FROM pg_class WHERE relname LIKE 'run\\_%%'"
                 " AND relpersistence = 't'") == 0


def test_retention_keeps_n_runs_the_live_one_and_its_predecessor(cdnow_loaded, settings):
    kept = dataclasses.replace(settings, keep_runs=3, keep_run_days=35)
    ids = [run_scoring(cdnow_loaded, kept, as_of=d).run_id for d in days(5)]
    # Retention ran after each run: only the newest three keep their rows.
    assert partitions(cdnow_loaded) == [(i, True) for i in ids[-3:]]
    for old in ids[:2]:
        record = runs.run_record(cdnow_loaded, old)
        assert record["status"] == "succeeded" and record["scores_retired_at"] is not None
        assert record["counts"]["customers"] == 2357 and record["models"]["selected"]
        assert reads.run_diagnostics(cdnow_loaded, old) is not None
    assert count(cdnow_loaded, "SELECT count(DISTINCT run_id) FROM tier_transitions") >= 1
    cdnow_loaded.commit()
    # Age: a month and a half later everything has expired but the two protected runs.
    later = datetime.now(UTC) + timedelta(days=60)
    report = retention.apply_retention(cdnow_loaded, kept, now=later)
    assert report.retired == [ids[2]] and sorted(report.kept) == ids[3:]
    assert partitions(cdnow_loaded) == [(i, True) for i in ids[3:]]
    live = runs.active_run(cdnow_loaded)
    assert live["run_id"] == ids[-1] and live["previous_run_id"] == ids[-2]
    assert reads.customer_scores(cdnow_loaded, "cdnow-0042")["scores"] is not None


def test_maintenance_drops_leftovers_and_says_what_it_did(cdnow_loaded, settings, cli_env,
                                                         monkeypatch):
    ids = [run_scoring(cdnow_loaded, settings, as_of=d).run_id for d in days(2)]
    # A run that died after writing its partition (kill -9): its table is left behind.
    dead = runs.create_run(cdnow_loaded, date(1998, 6, 30), "UTC")
    cdnow_loaded.execute(f"CREATE TABLE customer_scores_r{dead} (LIKE customer_scores)")
    cdnow_loaded.execute("UPDATE scoring_runs SET status = 'failed' WHERE id = %s", (dead,))
    cdnow_loaded.commit()
    monkeypatch.setenv("CRM_KEEP_RUNS", "1")
    r = CliRunner().invoke(main, ["maintenance", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["retention"]["orphans_dropped"] == [dead]
    assert out["retention"]["retired"] == []  # the live run and its predecessor are protected
    assert partitions(cdnow_loaded) == [(i, True) for i in ids]
    r = CliRunner().invoke(main, ["maintenance"], catch_exceptions=False)
    assert r.exit_code == 0 and "nothing to retire" in r.output


def test_an_interrupted_detach_is_finished_by_the_next_pass(cdnow_loaded, settings, dsn):
    ids = [run_scoring(cdnow_loaded, settings, as_of=d).run_id for d in days(3)]
    # Leave the oldest partition half-detached, as a cancelled DETACH CONCURRENTLY does.
    with psycopg.connect(dsn, autocommit=True) as other:
        reader = psycopg.connect(dsn)
        reader.execute(f"SELECT count(*) FROM customer_scores WHERE run_id = {ids[0]}")
        other.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            other.execute(f"ALTER TABLE customer_scores DETACH PARTITION customer_scores_r"
                          f"{ids[0]} CONCURRENTLY")
        reader.close()
    assert count(cdnow_loaded, "SELECT count(*) FROM pg_inherits WHERE inhdetachpending") == 1
    cdnow_loaded.commit()
    keep_one = dataclasses.replace(settings, keep_runs=1)
    report = retention.apply_retention(cdnow_loaded, keep_one)
    assert report.retired == [ids[0]]
    assert partitions(cdnow_loaded) == [(i, True) for i in ids[1:]]


def test_a_run_uses_its_own_statement_timeout(cdnow_loaded, settings, monkeypatch):
    seen = []
    real = run.score_base

    def spy(inputs, config):
        seen.append(cdnow_loaded.execute("SHOW statement_timeout").fetchone()[0])
        cdnow_loaded.commit()
        return real(inputs, config)

    monkeypatch.setattr(run, "score_base", spy)
    cdnow_loaded.execute("SET statement_timeout = '150ms'")
    cdnow_loaded.commit()
    tight = dataclasses.replace(settings, run_statement_timeout_ms=3_600_000)
    run_scoring(cdnow_loaded, tight, as_of=date(1998, 6, 30))
    assert seen == ["1h"]
    assert cdnow_loaded.execute("SHOW statement_timeout").fetchone()[0] == "150ms"
    cdnow_loaded.rollback()


# --- the upgrade from the previous release's layout ----------------------------------------

def _old_schema(url):
    """Apply the previous release's migrations (0001-0017) only."""
    backend = get_backend(schema._yoyo_uri(url))
    migrations = schema._migrations()
    with backend.lock():
        old = migrations.__class__([m for m in migrations if m.id < "0018"])
        backend.apply_migrations(backend.to_apply(old))
    backend.connection.close()


def test_migration_moves_unpartitioned_runs_to_partitions_without_losing_the_live_one(
        server_dsn):
    url = _fresh_db(server_dsn, "crm_mig_partitions")
    _old_schema(url)
    with psycopg.connect(url) as c:
        assert q(c, "SELECT relkind FROM pg_class WHERE relname = 'customer_scores'") \
            == [("r",)]
        ids = []
        for k in range(4):  # four runs, the third live (an operator rolled back), one failed
            status = "failed" if k == 3 else "succeeded"
            ids.append(c.execute(
                "INSERT INTO scoring_runs (status, as_of, timezone, finished_at)"
                " VALUES (%s, %s, 'UTC', now() + %s * interval '1 minute') RETURNING id",
                (status, date(2024, 1, 1) + timedelta(days=k), k)).fetchone()[0])
        for run_id in ids[:3]:
            c.execute(
                "INSERT INTO customer_scores (run_id, customer_id, frequency, recency_days,"
                " t_days, monetary_value, historic_spend, first_purchase, last_purchase,"
                " p_alive, expected_purchases_30, expected_purchases_90,"
                " expected_purchases_365, tier, churn_risk)"
                " SELECT %s, 'C-' || g, 1, 10, 20, 5, 10, '2023-12-01', '2023-12-11', 0.5,"
                " 0.1, 0.3, 1, 'active', 'low' FROM generate_series(1, 50) g", (run_id,))
        c.execute("UPDATE scoring_state SET active_run_id = %s", (ids[2],))
        c.execute("UPDATE customer_scores SET tier = 'high_value' WHERE run_id = %s"
                  " AND customer_id = 'C-7'", (ids[2],))
    assert schema.upgrade(url) == ["0018.run-partitions", "0019.safe-operations",
                                   "0020.forecast-intervals", "0021.identities"]
    with psycopg.connect(url) as c:
        assert q(c, "SELECT relkind FROM pg_class WHERE relname = 'customer_scores'") \
            == [("p",)]
        assert partitions(c) == [(i, True) for i in ids[:3]]
        assert count(c, "SELECT count(*) FROM customer_scores") == 150
        live = runs.active_run(c)
        assert live["run_id"] == ids[2] and live["previous_run_id"] == ids[1]
        assert reads.customer_scores(c, "C-7")["scores"]["tier"] == "high_value"
        assert runs.run_record(c, ids[3])["scores_retired_at"] is None  # failed: never had any
        c.commit()
        settings = _settings_for(url)
        report = retention.apply_retention(c, dataclasses.replace(settings, keep_runs=1))
        assert report.retired == [ids[0]]
        assert partitions(c) == [(i, True) for i in ids[1:3]]
    # And back: the rollback restores one plain table with the kept runs' rows.
    backend = get_backend(schema._yoyo_uri(url))
    with backend.lock():
        backend.rollback_migrations(backend.to_rollback(
            schema._migrations().filter(lambda m: m.id == "0018.run-partitions")))
    backend.connection.close()
    with psycopg.connect(url) as c:
        assert q(c, "SELECT relkind FROM pg_class WHERE relname = 'customer_scores'") \
            == [("r",)]
        assert partitions(c) == []
        assert count(c, "SELECT count(*) FROM customer_scores") == 100


def _settings_for(url):
    from crm_service.platform.config import load_settings

    return load_settings({"DATABASE_URL": url})


def test_a_retired_run_says_so_over_http(cdnow_loaded, settings, client, make_token):
    keep_one = dataclasses.replace(settings, keep_runs=1)
    ids = [run_scoring(cdnow_loaded, keep_one, as_of=d).run_id for d in days(3)]
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    old = client.get(f"/v1/scoring-runs/{ids[0]}", headers=token).json
    assert old["status"] == "succeeded" and old["scores_retired_at"] is not None
    assert old["counts"]["customers"] == 2357 and old["models"]["selected"]
    live = client.get(f"/v1/scoring-runs/{ids[2]}", headers=token).json
    assert live["scores_retired_at"] is None and live["previous_run_id"] == ids[1]
    # Its plots are still served.
    assert client.get(f"/v1/scoring-runs/{ids[0]}/plots/tracking.svg",
                      headers=token).status_code == 200


def test_a_long_reader_defers_one_run_and_the_next_pass_retires_it(cdnow_loaded, settings,
                                                                     dsn):
    """Review finding: a reader of an old run must not break retention (or erasure)."""
    from crm_service.privacy import erasure

    ids = [run_scoring(cdnow_loaded, settings, as_of=d).run_id for d in days(3)]
    before = cdnow_loaded.execute("SHOW statement_timeout").fetchone()[0]
    cdnow_loaded.commit()
    quick = dataclasses.replace(settings, keep_runs=1, run_statement_timeout_ms=1000)
    reader = psycopg.connect(dsn)  # an export still reading the oldest run
    reader.execute(f"SELECT count(*) FROM customer_scores WHERE run_id = {ids[0]}")
    other = psycopg.connect(dsn)
    assert other.execute("SELECT pg_try_advisory_lock(%s)",
                         (retention._RETENTION_LOCK,)).fetchone()[0]
    busy = retention.apply_retention(cdnow_loaded, quick)
    assert busy.busy and busy.retired == []  # one pass at a time
    other.close()
    report = retention.apply_retention(cdnow_loaded, quick)
    assert report.deferred == [ids[0]] and report.retired == []  # ids[1] is protected
    assert cdnow_loaded.execute("SHOW statement_timeout").fetchone()[0] == before
    cdnow_loaded.rollback()
    # Erasure reaches the half-detached partition too.
    assert q(cdnow_loaded, f"SELECT count(*) FROM customer_scores_r{ids[0]}"
                           " WHERE customer_id = 'cdnow-0042'") == [(1,)]
    cdnow_loaded.commit()
    reader.close()
    erasure.erase(cdnow_loaded, settings, "cdnow-0042")
    for run_id in ids:
        assert q(cdnow_loaded, f"SELECT count(*) FROM customer_scores_r{run_id}"
                               " WHERE customer_id = 'cdnow-0042'") == [(0,)]
    cdnow_loaded.commit()
    again = retention.apply_retention(cdnow_loaded, quick)
    assert again.retired == [ids[0]] and again.deferred == []
    assert partitions(cdnow_loaded) == [(i, True) for i in ids[1:]]


def test_an_erasure_that_started_before_the_run_is_not_published_again(
        cdnow_loaded, settings, dsn):
    """Review finding: an erasure waiting on a publish commits after the run read the orders."""
    import threading
    import time
    import unittest.mock

    from crm_service.privacy import erasure

    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 29))
    holder = psycopg.connect(dsn)
    holder.execute("SELECT 1 FROM scoring_state FOR UPDATE")  # a publish in progress
    done = threading.Event()

    def erase():
        with psycopg.connect(dsn) as c:
            erasure.erase(c, settings, "cdnow-0042")
        done.set()

    t = threading.Thread(target=erase)
    t.start()
    time.sleep(0.5)  # the erasure has started and waits for the lock
    from crm_service.storage.run_session import LocalRunSession

    real_write = LocalRunSession.write_scores

    def release_then_write(self, *args, **kwargs):
        # The other publish ends after this run read the orders: the erasure commits now,
        # before this run's table exists, so only publishing can still leave the customer out.
        holder.commit()
        assert done.wait(10)
        return real_write(self, *args, **kwargs)

    with unittest.mock.patch.object(LocalRunSession, "write_scores", release_then_write):
        live = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30)).run_id
    t.join(10)
    holder.close()
    assert done.is_set()
    assert q(cdnow_loaded, f"SELECT count(*) FROM customer_scores_r{live}"
                           " WHERE customer_id = 'cdnow-0042'") == [(0,)]
