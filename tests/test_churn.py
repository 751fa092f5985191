"""Churn scoring: time-split training, the ML-vs-baseline choice, bands, safe persistence."""

import csv
import dataclasses
import io
import json
from datetime import date

import numpy as np
import pytest
from click.testing import CliRunner

from crm_service.audiences.export import export_scores
from crm_service.cli import main
from crm_service.platform.config import ConfigError, load_settings
from crm_service.scoring import run_scoring
from models import churn as churn_model
from tests.conftest import count


def _scores(conn, run_id):
    return conn.execute("SELECT churn_probability, churn_risk FROM customer_scores"
                        " WHERE run_id = %s", (run_id,)).fetchall()


def test_score_cli_trains_validates_and_bands_churn(cdnow_loaded, cli_env):
    r = CliRunner().invoke(main, ["score", "--as-of", "1998-06-30", "--churn-horizon-days",
                                  "90", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)
    assert run["churn_horizon_days"] == 90
    churn = run["models"]["churn"]
    assert churn["used"] in {"ml", "btyd_baseline"} and churn["reason"]
    assert churn["horizon_days"] == 90 and churn["baseline_model"] == run["models"]["selected"]
    assert churn["validation_cutoff"] == "1998-04-01"  # A - H
    assert all(c < "1998-04-01" for c in churn["validation_training_cutoffs"])
    for side in ("ml", "btyd_baseline"):
        m = churn["validation"][side]
        assert 0.5 < m["roc_auc"] <= 1 and 0 < m["brier"] < 0.25
        assert 0 <= m["ece"] < 0.2 and m["top_decile_lift"] >= 1
    ml_won = churn["validation"]["ml"]["brier"] < churn["validation"]["btyd_baseline"]["brier"]
    assert (churn["used"] == "ml") == ml_won
    assert churn["risk_thresholds"] == {"medium": 0.5, "high": 0.8}
    rows = _scores(cdnow_loaded, run["run_id"])
    assert len(rows) == run["counts"]["customers"] == 2357
    for p, risk in rows:
        assert 0 <= p <= 1
        assert risk == ("high" if p >= 0.8 else "medium" if p >= 0.5 else "low")
    bands = run["counts"]["churn_risk"]
    assert sum(bands.values()) == 2357
    assert bands["high"] == sum(1 for _, risk in rows if risk == "high")
    stored = count(cdnow_loaded, "SELECT count(*) FROM churn_models WHERE run_id = %s",
                   run["run_id"])
    assert stored == (1 if churn["used"] == "ml" else 0)
    assert count(cdnow_loaded, "SELECT churn_horizon_days FROM scoring_runs WHERE id = %s",
                 run["run_id"]) == 90


def test_stored_churn_model_is_safe_to_load(cdnow_loaded, settings):
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30), churn_horizon_days=60)
    row = cdnow_loaded.execute("SELECT artifact, meta FROM churn_models WHERE run_id = %s",
                               (result.run_id,)).fetchone()
    if result.models["churn"]["used"] != "ml":
        assert row is None
        pytest.skip("the baseline validated better on this split; nothing stored")
    data, meta = bytes(row[0]), row[1]
    assert len(data) <= 5 * 1024 * 1024 and meta["bytes"] == len(data)
    assert meta["format"] == "skops" and meta["format_version"] == 1
    model = churn_model.loads(data, meta)
    p = model.predict_proba(np.zeros((3, len(churn_model.FEATURES))))[:, 1]
    assert np.all((p >= 0) & (p <= 1))
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(churn_model.ChurnArtifactError, match="SHA-256"):
        churn_model.loads(tampered, meta)
    with pytest.raises(churn_model.ChurnArtifactError, match="format"):
        churn_model.loads(data, {**meta, "format_version": 99})


def test_artifact_with_untrusted_types_is_refused():
    """A forged artifact whose hash matches but which holds a callable outside the allow-list
    (here os.system inside a FunctionTransformer) is never loaded."""
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    data = sio.dumps(FunctionTransformer(func=os.system))
    import hashlib

    meta = {"format": "skops", "format_version": 1, "features": list(churn_model.FEATURES),
            "sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(churn_model.ChurnArtifactError, match="untrusted types"):
        churn_model.loads(data, meta)


def test_risk_thresholds_are_configurable(cdnow_loaded, settings):
    custom = dataclasses.replace(settings, churn_risk_medium=0.3, churn_risk_high=0.6)
    result = run_scoring(cdnow_loaded, custom, as_of=date(1997, 9, 30), churn_horizon_days=30)
    assert result.models["churn"]["risk_thresholds"] == {"medium": 0.3, "high": 0.6}
    for p, risk in _scores(cdnow_loaded, result.run_id):
        assert risk == ("high" if p >= 0.6 else "medium" if p >= 0.3 else "low")


@pytest.mark.parametrize(("env", "message"), [
    ({"CRM_CHURN_RISK_MEDIUM": "0.8", "CRM_CHURN_RISK_HIGH": "0.5"}, "must be above"),
    ({"CRM_CHURN_RISK_HIGH": "1.5"}, "out of range"),
    ({"CRM_CHURN_HORIZON_DAYS": "3"}, "out of range"),
    ({"CRM_CHURN_HORIZON_DAYS": "ninety"}, "not an integer"),
])
def test_churn_settings_are_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_cli_rejects_a_bad_horizon(conn, cli_env):
    r = CliRunner().invoke(main, ["score", "--churn-horizon-days", "2"])
    assert r.exit_code == 2 and "--churn-horizon-days" in r.output


def test_scoring_run_request_carries_the_horizon(conn, client, make_token):
    token = {"Authorization": f"Bearer {make_token('runs:write', 'scores:read')}"}
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-06-30", "churn_horizon_days": 3},
                    headers=token)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-06-30", "churn_horizon_days": "90"},
                    headers=token)
    assert r.status_code == 422  # strict integers
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-06-30", "churn_horizon_days": 120},
                    headers=token)
    assert r.status_code == 202 and r.json["churn_horizon_days"] == 120
    assert client.get(r.headers["Location"], headers=token).json["churn_horizon_days"] == 120
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-06-30"}, headers=token)
    assert r.json["churn_horizon_days"] == 90


def test_export_has_churn_columns(cdnow_loaded, settings):
    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    out = io.StringIO()
    export_scores(cdnow_loaded, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 2357
    assert all(0 <= float(r["churn_probability"]) <= 1 for r in rows)
    assert {r["churn_risk"] for r in rows} <= {"low", "medium", "high"}


def test_metrics_on_known_cases():
    y = np.array([True] * 10 + [False] * 90)
    perfect = np.where(y, 0.9, 0.1)
    m = churn_model.metrics(y, perfect)
    assert m["roc_auc"] == 1.0 and m["top_decile_lift"] == pytest.approx(10.0)
    assert m["brier"] == pytest.approx(0.01)
    assert m["ece"] == pytest.approx(0.1)  # every bin is off by 0.1
    calibrated = np.full(100, 0.1)
    assert churn_model.metrics(y, calibrated)["ece"] == pytest.approx(0.0)
    assert churn_model.metrics(np.zeros(5, dtype=bool), np.full(5, 0.2))["roc_auc"] is None


def test_training_sample_is_stratified_and_bounded():
    y = np.arange(1000) % 4 == 0
    rows = churn_model.sample_rows(y, limit=100)
    assert rows.size == 100 and y[rows].sum() == 25
    assert np.array_equal(rows, churn_model.sample_rows(y, limit=100))  # deterministic
    assert churn_model.sample_rows(y, limit=5000).size == 1000


def test_churn_policy_setting_is_validated():
    assert load_settings({"CRM_CHURN_MODEL": "ML"}).churn_model == "ml"
    with pytest.raises(ConfigError, match="must be one of auto, ml, baseline"):
        load_settings({"CRM_CHURN_MODEL": "xgboost"})


def test_customer_scores_over_http(cdnow_loaded, settings, client, make_token):
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    r = client.get("/v1/customers/cdnow-0001/scores", headers=token)
    assert r.status_code == 404 and "no scoring run" in r.json["detail"]
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    r = client.get("/v1/customers/cdnow-0001/scores", headers=token)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["run_id"] == result.run_id and body["as_of"] == "1998-06-30"
    assert body["churn_horizon_days"] == 90 and body["customer_id"] == "cdnow-0001"
    stored = cdnow_loaded.execute(
        "SELECT churn_probability, churn_risk, p_alive FROM customer_scores"
        " WHERE run_id = %s AND customer_id = 'cdnow-0001'", (result.run_id,)).fetchone()
    assert body["churn_probability"] == pytest.approx(stored[0])
    assert body["churn_risk"] == stored[1] and body["p_alive"] == pytest.approx(stored[2])
    run = client.get(f"/v1/scoring-runs/{result.run_id}", headers=token).json
    assert set(run["models"]["churn"]["validation"]) == {"ml", "btyd_baseline"}
    assert set(run["counts"]["churn_risk"]) == {"low", "medium", "high"}
    r = client.get("/v1/customers/nobody/scores", headers=token)
    assert r.status_code == 404 and "no scores in the live run" in r.json["detail"]
    assert client.get("/v1/customers/" + "x" * 200 + "/scores", headers=token).status_code == 422
    no_scope = {"Authorization": f"Bearer {make_token('orders:write')}"}
    assert client.get("/v1/customers/cdnow-0001/scores", headers=no_scope).status_code == 403


def test_sampled_training_leaves_no_working_tables(cdnow_loaded, settings, monkeypatch):
    """A base larger than the training cap trains on a hash sample; nothing is left behind."""
    monkeypatch.setattr(churn_model, "MAX_TRAINING_ROWS", 4000)
    forced = dataclasses.replace(settings, churn_model="ml")
    result = run_scoring(cdnow_loaded, forced, as_of=date(1998, 6, 30))
    churn = result.models["churn"]
    assert churn["customer_share"] < 1 and churn["used"] == "ml"
    assert churn["training_rows"] <= 4000
    left = cdnow_loaded.execute(
        "SELECT string_agg(relname, ', ') FROM pg_class WHERE relpersistence = 't'"
        " AND relkind = 'r' AND relname LIKE 'run\\_%'").fetchone()[0]
    assert left is None
    assert all(0 <= p <= 1 for p, _ in _scores(cdnow_loaded, result.run_id))


def test_scoring_run_request_bodies_are_never_ignored(conn, client, make_token):
    token = {"Authorization": f"Bearer {make_token('runs:write')}"}
    r = client.post("/v1/scoring-runs", data='{"as_of": "1998-06-30"}',
                    content_type="text/plain", headers=token)
    assert r.status_code == 415 and r.mimetype == "application/problem+json"
    r = client.post("/v1/scoring-runs", data='{"as_of": ', content_type="application/json",
                    headers=token)
    assert r.status_code == 400 and r.json["title"] == "Malformed JSON"
    r = client.post("/v1/scoring-runs", json={"as_of": "1998-06-30", "churn_horizon_days": 3},
                    headers=token)
    assert r.status_code == 422 and "churn_horizon_days" in r.json["detail"]
    assert count(conn, "SELECT count(*) FROM scoring_runs") == 0
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    r = client.put("/v1/tier-policy", data="{nope", content_type="application/json",
                   headers=admin)
    assert r.status_code == 400
    r = client.put("/v1/tier-policy", data="{}", content_type="text/plain", headers=admin)
    assert r.status_code == 415
