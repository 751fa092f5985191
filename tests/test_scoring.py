"""Scoring runs on the real database: the CDNOW demo data end to end."""

import json
from datetime import date

import numpy as np
import pytest
from click.testing import CliRunner

from crm_service.cli import main
from crm_service.scoring import InsufficientHistoryError, run_scoring
from models.clv import customer_lifetime_value
from models.gamma_gamma import GammaGammaModel
from models.purchase import purchase_model
from tests.cdnow import cdnow_rfm
from tests.conftest import TEST_SECRET_KEY, count, q


def test_summary_in_sql_matches_the_definition(cdnow_loaded, settings):
    """Calibration summary computed in PostgreSQL equals the pandas one (same definition)."""
    from crm_service.scoring import occasions
    from crm_service.storage import summary

    with cdnow_loaded.transaction():
        n, rows = summary.collect_occasions(cdnow_loaded, date(1997, 9, 30), settings.timezone)
        s = occasions.summarize(summary.read_occasions(cdnow_loaded, n, rows),
                                date(1997, 9, 30))
        cdnow_loaded.execute("DROP TABLE run_occasions, run_customers")
    ref = cdnow_rfm()
    assert s.size == 2357
    np.testing.assert_array_equal(s.frequency, ref["frequency"])
    np.testing.assert_array_equal(s.recency, ref["recency"])
    np.testing.assert_array_equal(s.T, ref["T"])
    np.testing.assert_allclose(s.monetary_value, ref["monetary_value"], atol=0.005)


def test_score_cli_publishes_a_run_with_published_cdnow_parameters(cdnow_loaded, cli_env):
    r = CliRunner().invoke(main, ["score", "--as-of", "1997-09-30", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)
    assert run["time_unit"] == "days" and run["as_of"] == "1997-09-30"
    assert run["counts"]["customers"] == 2357
    bg = run["models"]["bgnbd"]["params"]
    # FHL 2005 (weeks): r 0.243, alpha 4.414, a 0.793, b 2.426 -> alpha in days is x7.
    assert bg["r"] == pytest.approx(0.243, rel=0.005)
    assert bg["alpha"] / 7 == pytest.approx(4.414, rel=0.005)
    assert bg["a"] == pytest.approx(0.793, rel=0.005)
    assert bg["b"] == pytest.approx(2.426, rel=0.005)
    gg = run["models"]["gamma_gamma"]["params"]
    assert (gg["p"], gg["q"], gg["v"]) == pytest.approx((6.25, 3.74, 15.44), rel=0.005)
    assert set(run["models"]["bgnbd"]["holdout"]) >= {"mae", "rmse", "calibration_end"}
    pn = run["models"]["pareto_nbd"]["params"]
    assert pn["r"] == pytest.approx(0.553, rel=0.005)
    assert pn["alpha"] / 7 == pytest.approx(10.578, rel=0.005)
    assert pn["s"] == pytest.approx(0.606, rel=0.005)
    assert pn["beta"] / 7 == pytest.approx(11.669, rel=0.005)
    holdouts = {k: run["models"][k]["holdout"]["mae"] for k in ("bgnbd", "pareto_nbd")}
    assert run["models"]["selected"] == min(holdouts, key=holdouts.get)
    assert len(json.dumps(run["models"])) < 10_000
    assert count(cdnow_loaded, "SELECT count(*) FROM customer_scores") == 2357
    assert count(cdnow_loaded, "SELECT active_run_id FROM scoring_state") == run["run_id"]


def test_scores_equal_the_models(cdnow_loaded, settings):
    result = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    selected = result.models["selected"]
    model = purchase_model(selected, result.models[selected]["params"])
    rows = cdnow_loaded.execute(
        "SELECT frequency, recency_days, t_days, p_alive, expected_purchases_90,"
        " expected_next_order, avg_days_between_orders, monetary_value, expected_spend,"
        " clv_12m FROM customer_scores WHERE run_id = %s", (result.run_id,)).fetchall()
    x, t_x, big_t, alive, e90 = (np.array([r[i] for r in rows], dtype=float) for i in range(5))
    m, spend, clv = (np.array([r[i] for r in rows], dtype=float) for i in (7, 8, 9))
    np.testing.assert_allclose(alive, model.probability_alive(x, t_x, big_t), rtol=1e-9)
    gg = GammaGammaModel.from_params(result.models["gamma_gamma"]["params"])
    np.testing.assert_allclose(spend, gg.conditional_expected_spend(x, m), rtol=1e-9)
    np.testing.assert_allclose(clv, customer_lifetime_value(model, x, t_x, big_t, spend),
                               rtol=1e-9)
    np.testing.assert_allclose(e90, model.conditional_expected_purchases(90, x, t_x, big_t),
                               rtol=1e-9)
    for r in rows:
        if r[3] < 0.5:  # next order date only for likely-alive customers ...
            assert r[5] is None
        elif r[5] is None:  # ... whose median wait is under ten years
            assert model.median_time_to_next_purchase(r[0], r[1], r[2]) >= 3650
        assert (r[6] is None) == (r[0] == 0)  # no interval without a repeat purchase


def test_failed_run_keeps_the_previous_run_live(cdnow_loaded, settings):
    first = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    with pytest.raises(InsufficientHistoryError, match="days of history"):
        run_scoring(cdnow_loaded, settings, as_of=date(1997, 1, 10))
    assert count(cdnow_loaded, "SELECT active_run_id FROM scoring_state") == first.run_id
    status, error = cdnow_loaded.execute(
        "SELECT status, error FROM scoring_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "failed" and "need 28" in error
    assert count(cdnow_loaded, "SELECT count(DISTINCT run_id) FROM customer_scores") == 1


def test_empty_database_says_what_is_missing(conn, cli_env):
    r = CliRunner().invoke(main, ["score", "--as-of", "2024-01-01"], catch_exceptions=False)
    assert r.exit_code == 1
    assert "0 customers with a paid order (need 30)" in r.output
    assert "0 repeat buyers (need 10)" in r.output


def test_export_scores_csv(cdnow_loaded, settings, cli_env, tmp_path):
    import csv

    result = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    out = tmp_path / "scores.csv"
    r = CliRunner().invoke(main, ["export", "scores", "--horizon-days", "39", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2357
    assert list(rows[0]) == ["customer_id", "tier", "value_segment", "rfm_segment", "frequency",
                             "recency_days", "T_days", "monetary_value", "p_alive",
                             "expected_purchases", "clv_12m", "churn_probability", "churn_risk",
                             "recommended_action", "purchases_p10", "purchases_p90",
                             "spend_365_p10", "spend_365_p90", "p_alive_note"]
    selected = result.models["selected"]
    model = purchase_model(selected, result.models[selected]["params"])
    x, t_x, big_t = (np.array([float(r[k]) for r in rows])
                     for k in ("frequency", "recency_days", "T_days"))
    got = np.array([float(r["expected_purchases"]) for r in rows])
    np.testing.assert_allclose(got, model.conditional_expected_purchases(39, x, t_x, big_t),
                               atol=1e-6)


def test_export_without_a_run_is_a_clear_error(conn, cli_env):
    r = CliRunner().invoke(main, ["export", "scores"], catch_exceptions=False)
    assert r.exit_code == 1 and "no scoring run has been published yet" in r.output


def test_models_and_runs_over_http(cdnow_loaded, settings, client, make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    r = client.get("/v1/models/active", headers=token)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    result = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    r = client.get("/v1/models/active", headers=token)
    assert r.status_code == 200 and r.json["run_id"] == result.run_id
    assert r.json["time_unit"] == "days"
    assert set(r.json["models"]["bgnbd"]["params"]) == {"r", "alpha", "a", "b"}
    assert set(r.json["models"]["pareto_nbd"]["params"]) == {"r", "alpha", "s", "beta"}
    assert set(r.json["models"]["gamma_gamma"]["params"]) == {"p", "q", "v"}
    with pytest.raises(InsufficientHistoryError):
        run_scoring(cdnow_loaded, settings, as_of=date(1997, 1, 5))
    failed = client.get(f"/v1/scoring-runs/{result.run_id + 1}", headers=token).json
    assert failed["status"] == "failed" and "history" in failed["error"]
    assert client.get("/v1/scoring-runs/999999", headers=token).status_code == 404
    no_scope = {"Authorization": f"Bearer {make_token('orders:write')}"}
    assert client.get("/v1/models/active", headers=no_scope).status_code == 403


def test_predictions_what_if(cdnow_loaded, settings, client, make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    case = {"frequency": 3, "recency": 120, "T": 200, "monetary_value": 35.5}
    assert client.post("/v1/predictions", json={"cases": [case]},
                       headers=token).status_code == 404
    result = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    r = client.post("/v1/predictions", json={"cases": [case], "horizons": [30, 90]},
                    headers=token)
    assert r.status_code == 200, r.json
    p = r.json["predictions"][0]
    selected = result.models["selected"]
    model = purchase_model(selected, result.models[selected]["params"])
    assert p["p_alive"] == pytest.approx(model.probability_alive([3], [120], [200])[0])
    assert p["expected_purchases"]["90"] == pytest.approx(
        model.conditional_expected_purchases(90, [3], [120], [200])[0])
    assert p["expected_purchases"]["30"] < p["expected_purchases"]["90"]
    bad = client.post("/v1/predictions", json={"cases": [{**case, "recency": 300}]},
                      headers=token)
    assert bad.status_code == 422 and "recency must not exceed T" in bad.json["detail"]
    assert client.post("/v1/predictions", json={"cases": [{**case, "frequency": -1}]},
                       headers=token).status_code == 422
    assert client.post("/v1/predictions", json={"cases": []}, headers=token).status_code == 422


def test_scoring_runs_requested_over_http_are_run_by_the_worker(cdnow_loaded, settings, client,
                                                                make_token, dsn):
    import psycopg

    from crm_service.platform.worker import process_one

    writer = {"Authorization": f"Bearer {make_token('runs:write')}"}
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    r = client.post("/v1/scoring-runs", json={"as_of": "1997-09-30"}, headers=writer)
    assert r.status_code == 202 and r.json["status"] == "queued"
    url = r.headers["Location"]
    assert url == f"/v1/scoring-runs/{r.json['run_id']}"
    with psycopg.connect(dsn) as worker_conn:
        assert process_one(worker_conn, settings) == r.json["run_id"]
        assert process_one(worker_conn, settings) is None  # queue empty
    run = client.get(url, headers=reader).json
    assert run["status"] == "succeeded" and run["progress"] == "published"
    assert run["counts"]["customers"] == 2357
    assert client.get("/v1/models/active", headers=reader).json["run_id"] == run["run_id"]


def test_a_failing_queued_run_is_recorded_and_the_worker_goes_on(cdnow_loaded, settings, client,
                                                                  make_token, dsn):
    import psycopg

    from crm_service.platform.worker import process_one

    writer = {"Authorization": f"Bearer {make_token('runs:write', 'scores:read')}"}
    bad = client.post("/v1/scoring-runs", json={"as_of": "1997-01-03"}, headers=writer).json
    good = client.post("/v1/scoring-runs", json={"as_of": "1997-09-30"}, headers=writer).json
    with psycopg.connect(dsn) as worker_conn:
        assert process_one(worker_conn, settings) == bad["run_id"]
        assert process_one(worker_conn, settings) == good["run_id"]
    failed = client.get(f"/v1/scoring-runs/{bad['run_id']}", headers=writer).json
    assert failed["status"] == "failed" and "history" in failed["error"]
    assert client.get(f"/v1/scoring-runs/{good['run_id']}",
                      headers=writer).json["status"] == "succeeded"


def test_two_workers_never_take_the_same_run(conn, settings, dsn):
    import psycopg

    from crm_service.storage import runs

    run_id = runs.create_run(conn, date(2024, 1, 1), "UTC", status="queued")
    with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b:
        # Worker A holds the row (mid-claim); worker B skips it rather than waiting or taking it.
        a.execute("SELECT 1 FROM scoring_runs WHERE id = %s FOR UPDATE", (run_id,))
        assert runs.claim_queued_run(b) is None
        a.rollback()
        assert runs.claim_queued_run(b) == (run_id, date(2024, 1, 1), 2)
        assert runs.claim_queued_run(a) is None


def test_scoring_run_request_validation(client, make_token):
    writer = {"Authorization": f"Bearer {make_token('runs:write')}"}
    assert client.post("/v1/scoring-runs", json={"as_of": "2999-01-01"},
                       headers=writer).status_code == 422
    assert client.post("/v1/scoring-runs", json={"as_of": "yesterday"},
                       headers=writer).status_code == 422
    assert client.post("/v1/scoring-runs", json={"as_of": "2024-01-01", "x": 1},
                       headers=writer).status_code == 422
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    assert client.post("/v1/scoring-runs", json={}, headers=reader).status_code == 403


def test_worker_command_runs_queued_runs_and_stops_on_sigterm(cdnow_loaded, settings, dsn,
                                                              tmp_path):
    import os
    import subprocess
    import sys
    import time

    from crm_service.storage import runs

    run_id = runs.create_run(cdnow_loaded, date(1997, 9, 30), "UTC", status="queued")
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(tmp_path),
               CRM_SECRET_KEY=TEST_SECRET_KEY)
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "worker", "--poll-seconds",
                             "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            status = cdnow_loaded.execute("SELECT status FROM scoring_runs WHERE id = %s",
                                          (run_id,)).fetchone()[0]
            cdnow_loaded.commit()
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert status == "succeeded"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("name", ["holdout_by_frequency", "p_alive", "tracking"])
def test_diagnostics_plots_are_svg(cdnow_loaded, settings, client, make_token, name):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    r = client.get(f"/v1/scoring-runs/{result.run_id}/plots/{name}.svg", headers=token)
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    assert r.data.lstrip().startswith(b"<?xml") and b"<svg" in r.data


def test_plots_are_rendered_at_publish_and_otherwise_on_first_request(cdnow_loaded, settings,
                                                                       client, make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    stored = dict(q(cdnow_loaded, "SELECT name, svg FROM run_plots WHERE run_id = %s"
                    " AND lang = 'en'", result.run_id))
    assert sorted(stored) == ["holdout_by_frequency", "p_alive", "tracking"]
    assert count(cdnow_loaded, "SELECT count(*) FROM run_plots WHERE lang = 'zh-Hans'") == 3
    r = client.get(f"/v1/scoring-runs/{result.run_id}/plots/tracking.svg", headers=token)
    assert r.data == bytes(stored["tracking"])
    # A run published before plots were stored: rendered on request, then kept.
    cdnow_loaded.execute("DELETE FROM run_plots")
    cdnow_loaded.commit()
    r = client.get(f"/v1/scoring-runs/{result.run_id}/plots/p_alive.svg", headers=token)
    assert r.status_code == 200 and r.data.startswith(b"<?xml")
    assert q(cdnow_loaded, "SELECT name FROM run_plots") == [("p_alive",)]


def test_plot_errors(cdnow_loaded, settings, client, make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    r = client.get(f"/v1/scoring-runs/{result.run_id}/plots/nope.svg", headers=token)
    assert r.status_code == 404 and "plots: holdout_by_frequency" in r.json["detail"]
    assert client.get("/v1/scoring-runs/999999/plots/tracking.svg",
                      headers=token).status_code == 404


def test_a_run_whose_process_died_is_marked_failed(cdnow_loaded, settings, dsn):
    """The session running a run owns it; when that session dies the run is marked failed."""
    import psycopg

    from crm_service.storage import runs

    live = run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30)).run_id
    other = psycopg.connect(dsn)
    dying = runs.create_run(other, date(1998, 6, 30), "UTC")  # running, owned by `other`
    queued = runs.create_run(other, date(1998, 6, 30), "UTC", status="queued")
    assert runs.fail_dead_runs(cdnow_loaded) == []  # its owner is alive: left alone
    assert runs.claim_queued_run(cdnow_loaded)[0] == queued  # running runs are not taken
    runs.release_run(cdnow_loaded, queued)
    other.close()  # as a kill -9 would: the session ends, and its lock with it
    assert runs.fail_dead_runs(cdnow_loaded) == [dying, queued]
    status, error = cdnow_loaded.execute("SELECT status, error FROM scoring_runs WHERE id = %s",
                                         (dying,)).fetchone()
    assert status == "failed" and "stopped before it finished" in error
    assert runs.active_run(cdnow_loaded)["run_id"] == live  # the previous run stays live
    cdnow_loaded.commit()
    # An attempt that is no longer the run's owner cannot publish.
    with pytest.raises(runs.RunTakenOverError):
        run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30), run_id=dying, attempt=1)


def test_worker_survives_losing_the_database(settings):
    import threading

    from crm_service.errors import DatabaseUnavailableError
    from crm_service.platform.worker import run_worker

    calls = []
    stop = threading.Event()

    def connect():
        calls.append(1)
        if len(calls) >= 3:
            stop.set()
        raise DatabaseUnavailableError("database is restarting")

    run_worker(connect, settings, poll_seconds=0.1, stop=stop, webhooks=False)
    assert len(calls) == 3  # kept trying instead of dying


def test_prediction_inputs_are_bounded_and_consistent(cdnow_loaded, settings, client,
                                                      make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    run_scoring(cdnow_loaded, settings, as_of=date(1997, 9, 30))
    ok = {"frequency": 2, "recency": 10, "T": 20}
    for bad in ({**ok, "frequency": 3.5}, {**ok, "frequency": 10**30}, {**ok, "T": 1e300},
                {**ok, "frequency": 5, "recency": 2}):
        r = client.post("/v1/predictions", json={"cases": [bad]}, headers=token)
        assert r.status_code == 422, bad
    assert client.post("/v1/predictions", json={"cases": [ok]}, headers=token).status_code == 200
