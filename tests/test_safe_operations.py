"""Safe operations: the right database from anywhere, guarded scoring dates, dry runs, the run
list (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from crm_service.cli import main
from crm_service.platform.worker import process_one
from crm_service.scoring import run_scoring
from crm_service.scoring.dates import StaleScoringDateError
from crm_service.storage import runs
from tests.conftest import count, q

NEWEST_CDNOW = "1998-06-30"  # the day of the sample's newest order


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


# --- one database, wherever you stand ---------------------------------------------------------


def _bare_env(home: Path) -> dict[str, str]:
    """The environment of a cron job: no DATABASE_URL, no CRM_DATA_DIR, its own HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CRM_DATA_DIR", "CRM_SECRET_KEY")
           and not k.startswith("PYTEST")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "share"))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crm_service", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_the_cli_uses_one_database_from_any_folder_and_creates_none_by_accident(tmp_path):
    home, a, b = tmp_path / "home", tmp_path / "etl", tmp_path / "cron"
    for d in (home, a, b):
        d.mkdir()
    env = _bare_env(home)
    (a / "customers.csv").write_text("customer_id,email\nW1,w1@example.com\nW2,\n")
    (b / "customers.csv").write_text("customer_id,name\nW1,Wang\n")
    expected = home / "share" / "crm-service"

    # No database yet: refused, with where it looked and how to create one; nothing written.
    refused = _run(["import", "customers", "customers.csv"], a, env)
    assert refused.returncode == 2, refused.stderr
    assert str(expected) in refused.stderr and "crm-service db upgrade" in refused.stderr
    assert not expected.exists() and not (a / ".crm-data").exists()
    for args in (["score"], ["maintenance"], ["keys", "list"]):
        assert _run(args, a, env).returncode == 2

    created = _run(["db", "upgrade"], a, env)
    assert created.returncode == 0, created.stderr
    assert (expected / "pg" / "PG_VERSION").is_file()
    assert f"database: embedded PostgreSQL in {expected}" in created.stderr

    first = _run(["import", "customers", "customers.csv"], a, env)
    assert first.returncode == 0, first.stderr
    assert "2 inserted" in first.stdout
    # The same profiles from another folder: the same database (W1 updated, not inserted).
    second = _run(["import", "customers", "customers.csv"], b, env)
    assert second.returncode == 0, second.stderr
    assert "1 updated" in second.stdout and "inserted" not in second.stdout.replace(
        "0 inserted", "")
    assert second.stderr.count("database: ") == 1
    assert not (a / ".crm-data").exists() and not (b / ".crm-data").exists()


def test_an_old_local_data_folder_is_not_shadowed_by_a_new_empty_database(tmp_path,
                                                                         monkeypatch):
    old = tmp_path / "project" / ".crm-data" / "pg"
    old.mkdir(parents=True)
    (old / "PG_VERSION").write_text("16\n")
    monkeypatch.chdir(tmp_path / "project")
    env = {"DATABASE_URL": None, "CRM_DATA_DIR": None,
           "XDG_DATA_HOME": str(tmp_path / "share")}
    for args in (["db", "upgrade"], ["serve", "--port", "8039"], ["demo", "--no-serve"]):
        r = cli(*args, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert f"CRM_DATA_DIR={old.parent}" in r.stderr and "Nothing was created" in r.stderr
    assert not (tmp_path / "share").exists()
    # Elsewhere commands only note it (and refuse for want of a database).
    r = cli("keys", "list", env=env)
    assert r.exit_code == 2 and "no embedded PostgreSQL" in r.stderr


def test_the_database_line_names_an_external_database_without_its_password(cli_env, dsn):
    from crm_service.cli import describe_database
    from crm_service.platform.config import load_settings

    url = "postgresql://crm:s3cret@db.internal:5433/crm_prod"
    line = describe_database(load_settings({"DATABASE_URL": url}), url)
    assert line == "crm_prod on db.internal:5433 as crm (DATABASE_URL)"
    assert "s3cret" not in line
    result = CliRunner().invoke(main, ["keys", "list"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "database: " in result.stderr and "(DATABASE_URL)" in result.stderr


# --- guarded scoring dates -----------------------------------------------------------------


def test_a_run_long_after_the_newest_order_is_refused_unless_allowed(cdnow_loaded, client,
                                                                     make_token, settings, dsn):
    writer = {"Authorization": f"Bearer {make_token('runs:write')}"}
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-09-30"}, headers=writer)
    assert r.status_code == 422 and r.content_type == "application/problem+json"
    assert NEWEST_CDNOW in r.json["detail"] and "92 days" in r.json["detail"]
    assert "allow_stale" in r.json["detail"]
    assert count(cdnow_loaded, "SELECT count(*) FROM scoring_runs") == 0  # before any work
    # Within CRM_MAX_STALE_DAYS: accepted.
    assert client.post("/v1/scoring-runs", json={"as_of": "1998-07-30"},
                       headers=writer).status_code == 202
    allowed = client.post("/v1/scoring-runs", json={"as_of": "1998-09-30", "allow_stale": True},
                          headers=writer)
    assert allowed.status_code == 202 and allowed.json["allow_stale"] is True
    # Called directly (a script, the CLI), the guard holds too and records nothing.
    with psycopg.connect(dsn) as c:
        with pytest.raises(StaleScoringDateError, match=NEWEST_CDNOW):
            run_scoring(c, settings, as_of=date(1999, 1, 1))
    assert count(cdnow_loaded, "SELECT count(*) FROM scoring_runs") == 2


def test_the_cli_refuses_a_stale_date_with_exit_2(cdnow_loaded, cli_env):
    result = cli("score", "--as-of", "1999-06-30")
    assert result.exit_code == 2
    assert NEWEST_CDNOW in result.stderr and "--allow-stale" in result.stderr
    assert count(cdnow_loaded, "SELECT count(*) FROM scoring_runs") == 0


def test_a_queued_run_that_became_stale_fails_with_the_reason(cdnow_loaded, settings, dsn):
    # Queued with allow_stale off by something that skipped the API's check (the schedule):
    # the worker refuses it and records why; nothing is published.
    run_id = runs.create_run(cdnow_loaded, date(1999, 6, 30), "UTC", status="queued")
    with psycopg.connect(dsn) as c:
        assert process_one(c, settings) == run_id
    status, error = q(cdnow_loaded, "SELECT status, error FROM scoring_runs WHERE id = %s",
                      run_id)[0]
    assert status == "failed" and NEWEST_CDNOW in error
    assert q(cdnow_loaded, "SELECT active_run_id FROM scoring_state")[0][0] is None


def test_the_default_as_of_is_the_newest_order_day_and_the_answer_says_so(cdnow_loaded, client,
                                                                          make_token):
    writer = {"Authorization": f"Bearer {make_token('runs:write')}"}
    r = client.post("/v1/scoring-runs", json={}, headers=writer)
    assert r.status_code == 202
    assert r.json["as_of"] == NEWEST_CDNOW
    assert NEWEST_CDNOW in r.json["notice"] and "newest paid order" in r.json["notice"]
    # Given explicitly, no notice.
    r = client.post("/v1/scoring-runs", json={"as_of": NEWEST_CDNOW}, headers=writer)
    assert "notice" not in r.json


# --- dry runs ------------------------------------------------------------------------------


def test_a_dry_run_publishes_nothing_and_reports_what_publishing_would_do(cdnow_loaded, client,
                                                                         make_token, settings,
                                                                         dsn):
    conn = cdnow_loaded
    with psycopg.connect(dsn) as c:
        first = run_scoring(c, settings, as_of=date(1997, 9, 30))
    events_before = count(conn, "SELECT count(*) FROM events")
    history_before = count(conn, "SELECT count(*) FROM tier_transitions")

    writer = {"Authorization": f"Bearer {make_token('runs:write', 'scores:read')}"}
    r = client.post("/v1/scoring-runs", json={"as_of": NEWEST_CDNOW, "dry_run": True},
                    headers=writer)
    assert r.status_code == 202 and r.json["dry_run"] is True
    with psycopg.connect(dsn) as c:
        assert process_one(c, settings) == r.json["run_id"]
    dry = client.get(f"/v1/scoring-runs/{r.json['run_id']}", headers=writer).json
    assert dry["status"] == "succeeded" and dry["dry_run"] is True
    assert dry["progress"] == "dry run: not published" and dry["scores_retired_at"]
    report = dry["counts"]["dry_run"]
    assert report["published"] is False and report["compared_with_run_id"] == first.run_id
    assert report["events_total"] > 0
    # Nothing changed for readers or the campaign tool.
    assert count(conn, "SELECT count(*) FROM events") == events_before
    assert count(conn, "SELECT count(*) FROM tier_transitions") == history_before
    assert q(conn, "SELECT active_run_id FROM scoring_state")[0][0] == first.run_id
    assert client.get("/v1/models/active", headers=writer).json["run_id"] == first.run_id
    assert count(conn, "SELECT count(*) FROM pg_class WHERE relname = %s",
                 f"customer_scores_r{dry['run_id']}") == 0

    # The real run publishes exactly what the dry run said it would.
    with psycopg.connect(dsn) as c:
        real = run_scoring(c, settings, as_of=date(1998, 6, 30))
    emitted = dict(q(conn, "SELECT type, count(*) FROM events WHERE run_id = %s GROUP BY type",
                     real.run_id))
    assert emitted == report["events"]
    assert real.counts["tier_transition_matrix"] == dry["counts"]["tier_transition_matrix"]
    assert real.counts["tiers"] == dry["counts"]["tiers"]
    # Retention never counts a dry run as one of the kept runs, and it never became live.
    assert q(conn, "SELECT active_run_id FROM scoring_state")[0][0] == real.run_id


def test_the_cli_dry_run_prints_the_report(cdnow_loaded, cli_env, settings, dsn):
    with psycopg.connect(dsn) as c:
        run_scoring(c, settings, as_of=date(1997, 9, 30))
    result = cli("score", "--as-of", NEWEST_CDNOW, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run, NOT published" in result.stdout
    assert "tier moves against the live run" in result.stdout
    assert "publishing would emit" in result.stdout and "dormant.entered" in result.stdout
    assert count(cdnow_loaded, "SELECT count(*) FROM events WHERE run_id > 0"
                 " AND run_id <> (SELECT min(id) FROM scoring_runs)") == 0


def _score_with_stderr_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run ``crm-service score`` with stderr on a pseudo-terminal; its exit code and stderr."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "score", *args],
                            stdout=subprocess.DEVNULL, stderr=follower, env=dict(os.environ),
                            cwd=Path(__file__).resolve().parents[1])
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode()


def test_progress_is_shown_on_a_terminal_only(cdnow_loaded, cli_env):
    code, err = _score_with_stderr_on_a_terminal("--as-of", "1997-09-30")
    assert code == 0, err
    for stage in ("summarising orders", "fitting models and scoring customers",
                  "writing scores", "publishing"):
        assert f"] {stage}" in err, err
    code, err = _score_with_stderr_on_a_terminal("--as-of", "1997-09-30", "--json")
    assert code == 0, err
    assert "] summarising orders" not in err
    # Piped (CliRunner's stderr is not a terminal): quiet too.
    result = cli("score", "--as-of", "1997-09-30")
    assert result.exit_code == 0 and "] summarising" not in result.stderr


# --- the run list --------------------------------------------------------------------------


def test_the_run_list_is_newest_first_paged_and_filtered(cdnow_loaded, client, make_token,
                                                         settings, dsn):
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    with psycopg.connect(dsn) as c:
        first = run_scoring(c, settings, as_of=date(1997, 9, 30))
        dry = run_scoring(c, settings, as_of=date(1998, 6, 30), dry_run=True)
    queued = runs.create_run(cdnow_loaded, date(1998, 6, 30), "UTC", status="queued")

    page = client.get("/v1/scoring-runs?limit=2", headers=reader).json
    assert [r["run_id"] for r in page["items"]] == [queued, dry.run_id]
    assert page["next_cursor"]
    rest = client.get(f"/v1/scoring-runs?limit=2&cursor={page['next_cursor']}",
                      headers=reader).json
    assert [r["run_id"] for r in rest["items"]] == [first.run_id] and rest["next_cursor"] is None

    live = rest["items"][0]
    assert live["live"] is True and live["status"] == "succeeded" and live["scores_kept"]
    assert live["customers"] == 2357 and live["as_of"] == "1997-09-30"
    assert live["selected_model"] in ("bgnbd", "pareto_nbd") and live["holdout_mae"] > 0
    assert live["churn"]["used"] in ("ml", "btyd_baseline")
    assert live["churn"]["horizon_days"] == 90 and "ml" in live["churn"]["validation"]
    assert live["stage_seconds"]["publish"] >= 0 and live["seconds"] > 0
    d = page["items"][1]
    assert d["dry_run"] is True and d["live"] is False and d["scores_kept"] is False
    assert d["dry_run_report"]["events_total"] > 0

    only_dry = client.get("/v1/scoring-runs?dry_run=true", headers=reader).json["items"]
    assert [r["run_id"] for r in only_dry] == [dry.run_id]
    queued_only = client.get("/v1/scoring-runs?status=queued", headers=reader).json["items"]
    assert [r["run_id"] for r in queued_only] == [queued]
    assert queued_only[0]["scores_kept"] is False and queued_only[0]["churn"] is None


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=101", "cursor=bm9wZQ",
                                   "cursor=%25%25", "dry_run=maybe",
                                   "cursor=cnVuOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"])
def test_the_run_list_rejects_bad_queries(client, make_token, query):
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    r = client.get(f"/v1/scoring-runs?{query}", headers=reader)
    assert r.status_code == 422 and r.content_type == "application/problem+json"


def test_dry_and_stale_flags_must_be_booleans(client, make_token):
    writer = {"Authorization": f"Bearer {make_token('runs:write')}"}
    for body in ({"dry_run": "yes"}, {"allow_stale": 1}, {"dry_run": None}):
        r = client.post("/v1/scoring-runs", json=body, headers=writer)
        assert r.status_code == 422, body


def test_migration_0019_upgrades_a_running_base_and_rolls_back(server_dsn):
    from yoyo import get_backend

    from crm_service.platform import schema
    from tests.test_schema import _fresh_db

    url = _fresh_db(server_dsn, "crm_mig_safe_ops")
    backend = get_backend(schema._yoyo_uri(url))
    with backend.lock():  # the base as the previous release left it
        backend.apply_migrations(backend.to_apply(
            schema._migrations().filter(lambda m: m.id != "0019.safe-operations")))
    backend.connection.close()
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO scoring_runs (status, as_of, timezone) VALUES"
                  " ('succeeded', '2024-01-01', 'UTC')")
    assert schema.upgrade(url) == ["0019.safe-operations"]
    with psycopg.connect(url) as c:
        assert q(c, "SELECT dry_run, allow_stale FROM scoring_runs") == [(False, False)]
        c.execute("INSERT INTO scoring_runs (status, as_of, timezone, dry_run) VALUES"
                  " ('succeeded', '2024-01-02', 'UTC', true)")
        c.commit()
        assert count(c, "SELECT count(*) FROM pg_indexes WHERE indexname = ANY(%s)",
                     ["orders_paid_at_idx", "events_created_brin",
                      "webhook_deliveries_event_idx"]) == 3
    backend = get_backend(schema._yoyo_uri(url))
    with backend.lock():
        backend.rollback_migrations(backend.to_rollback(
            schema._migrations().filter(lambda m: m.id == "0019.safe-operations")))
    backend.connection.close()
    with psycopg.connect(url) as c:
        # The dry run (which the previous release could not tell from a real run) goes.
        assert q(c, "SELECT as_of::text FROM scoring_runs") == [("2024-01-01",)]
        assert count(c, "SELECT count(*) FROM information_schema.columns"
                        " WHERE table_name = 'scoring_runs' AND column_name = 'dry_run'") == 0
        assert count(c, "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_paid_at_idx'"
                     ) == 0
    assert schema.upgrade(url) == ["0019.safe-operations"]
