"""Tiers, value and RFM segments and recommended actions: the policy and its application."""

import csv
import io
import json
from datetime import date

import numpy as np
import pytest

from crm_service.audiences.export import export_scores
from crm_service.scoring import run_scoring
from crm_service.storage import policies
from models import segments
from models.segments import PolicyError, TierPolicy


def test_ntile_matches_dplyr():
    # dplyr::ntile(c(5, 1, 3, 3, 2, 4, 6, 8, 7, 9), 5) -> 3 1 2 2 1 3 4 5 4 5 (ties by order)
    got = segments.ntile(np.array([5, 1, 3, 3, 2, 4, 6, 8, 7, 9], dtype=float))
    assert got.tolist() == [3, 1, 2, 2, 1, 3, 4, 5, 4, 5]
    assert segments.ntile(np.array([2.0, 2.0, 2.0])).tolist() == [1, 2, 4]


@pytest.mark.parametrize(("rfm", "name"), [
    ((5, 5, 5), "champions"), ((4, 4, 4), "potential_loyalist"), ((2, 4, 4), "loyal_customers"),
    ((3, 1, 3), "promising"), ((5, 1, 1), "new_customers"), ((1, 3, 5), "cant_lose_them"),
    ((1, 2, 5), "at_risk"), ((1, 3, 3), "need_attention"), ((2, 1, 1), "about_to_sleep"),
    ((2, 2, 4), "loyal_customers"), ((3, 3, 3), "potential_loyalist"),  # first match wins
    ((1, 1, 1), "lost"), ((2, 5, 1), "others"),
])
def test_rfm_rules_of_the_r_package(rfm, name):
    r, f, m = (np.array([v], dtype=np.int8) for v in rfm)
    assert segments.RFM_SEGMENTS[segments.rfm_segments(r, f, m)[0]] == name


def test_tiers_follow_the_policy_with_hysteresis():
    policy = TierPolicy()
    n = 1000
    first = np.full(n, 400.0)
    first[:10] = 5  # new
    last = np.full(n, 20.0)
    last[10:60] = 300  # dormant: no purchase in 180 days
    churn = np.full(n, 0.3)
    churn[60:70] = 0.95  # dormant by churn probability
    clv = np.arange(n, dtype=float)
    tiers = segments.assign_tiers(policy, days_since_first=first, days_since_last=last,
                                  churn=churn, clv=clv)
    names = np.asarray(segments.TIERS)[tiers]
    assert (names[:10] == "new").all() and (names[10:70] == "dormant").all()
    eligible = n - 70
    assert (names == "high_value").sum() == int(eligible * 0.10)
    assert (names[-int(eligible * 0.10):] == "high_value").all()
    # A customer who was high-value keeps the tier inside the top 15%, not below it.
    was = names == "high_value"
    clv2 = clv.copy()
    clv2[np.flatnonzero(was)[0]] = np.percentile(clv[70:], 88)  # fell to the 88th percentile
    clv2[np.flatnonzero(was)[1]] = np.percentile(clv[70:], 50)  # fell to the median
    again = np.asarray(segments.TIERS)[segments.assign_tiers(
        policy, days_since_first=first, days_since_last=last, churn=churn, clv=clv2,
        was_high_value=was)]
    assert again[np.flatnonzero(was)[0]] == "high_value"
    assert again[np.flatnonzero(was)[1]] == "active"


def test_actions_default_mapping():
    policy = TierPolicy()
    tiers = np.array([segments.TIERS.index(t) for t in
                      ("new", "active", "active", "high_value", "dormant", "dormant")],
                     dtype=np.int8)
    value = np.array([0, 0, 0, 2, 2, 1], dtype=np.int8)
    risk = np.array([False, True, False, False, False, False])
    names = segments.action_names(policy)
    got = [names[k] for k in segments.recommended_actions(policy, tiers, value, risk)]
    assert got == ["welcome_second_purchase", "retention_offer", "cross_sell", "vip_care",
                   "vip_win_back", "win_back"]


@pytest.mark.parametrize(("data", "message"), [
    ({"new_days": 0}, "new_days"),
    ({"dormant_days": 10}, "dormant_days"),
    ({"dormant_churn": 1.5}, "dormant_churn"),
    ({"high_value_share": 0.2, "high_value_keep_share": 0.1}, "high_value_keep_share"),
    ({"value_high_share": 0.7, "value_medium_share": 0.5}, "value_medium_share"),
    ({"actions": {"new": "send spam!"}}, "actions.new"),
    ({"actions": {"unknown_case": "x"}}, "actions"),
    ({"dormant_dayz": 90}, "dormant_dayz: unknown field"),
    ({"new_days": True}, "new_days"),
])
def test_policy_validation(data, message):
    with pytest.raises(PolicyError, match=message):
        TierPolicy.from_dict(data)


def test_runs_assign_tiers_segments_and_actions(cdnow_loaded, settings):
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    counts = result.counts
    assert sum(counts["tiers"].values()) == 2357
    assert sum(counts["rfm_segments"].values()) == 2357
    assert result.models["tier_policy"]["version"] == 1
    rows = cdnow_loaded.execute(
        "SELECT tier, value_segment, rfm_recency, rfm_frequency, rfm_monetary, rfm_segment,"
        " recommended_action, t_days, t_days - recency_days, churn_probability"
        " FROM customer_scores WHERE run_id = %s", (result.run_id,)).fetchall()
    for tier, value, r, f, m, rfm, action, since_first, since_last, churn in rows:
        assert tier in segments.TIERS and value in segments.VALUE_SEGMENTS
        assert 1 <= min(r, f, m) and max(r, f, m) <= 5 and rfm in segments.RFM_SEGMENTS
        if since_first < 30:
            assert tier == "new" and action == "welcome_second_purchase"
        elif since_last >= 180 or churn >= 0.9:
            assert tier == "dormant"
            assert action == ("vip_win_back" if value == "high" else "win_back")
    assert cdnow_loaded.execute("SELECT tier_policy_version FROM scoring_runs WHERE id = %s",
                                (result.run_id,)).fetchone()[0] == 1
    out = io.StringIO()
    export_scores(cdnow_loaded, out)
    exported = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert {r["tier"] for r in exported} <= set(segments.TIERS)
    assert all(r["recommended_action"] and r["rfm_segment"] for r in exported)


def test_a_new_policy_version_applies_to_the_next_run(cdnow_loaded, settings):
    version = policies.set_tier_policy(cdnow_loaded, {**TierPolicy().as_dict(),
                                                         "dormant_days": 90}, "test")
    assert version == 2
    result = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    assert result.models["tier_policy"]["version"] == 2
    assert result.models["tier_policy"]["dormant_days"] == 90
    dormant = cdnow_loaded.execute(
        "SELECT count(*) FILTER (WHERE tier = 'dormant' AND t_days - recency_days < 90"
        "   AND churn_probability < 0.9 AND t_days >= 30) FROM customer_scores"
        " WHERE run_id = %s", (result.run_id,)).fetchone()[0]
    assert dormant == 0


def test_tier_policy_over_http(conn, client, make_token):
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    r = client.get("/v1/tier-policy", headers=reader)
    assert r.status_code == 200 and r.json["version"] == 1 and r.json["new_days"] == 30
    assert client.put("/v1/tier-policy", json={"dormant_days": 120},
                      headers=reader).status_code == 403
    r = client.put("/v1/tier-policy", json={**r.json, "dormant_days": 120}, headers=admin)
    assert r.status_code == 200 and r.json["version"] == 2 and r.json["dormant_days"] == 120
    for bad, field in (({"dormant_days": 5}, "dormant_days"), ({"nope": 1}, "nope"),
                       ({"high_value_share": "a lot"}, "high_value_share")):
        r = client.put("/v1/tier-policy", json=bad, headers=admin)
        assert r.status_code == 422 and r.mimetype == "application/problem+json"
        assert field in r.json["detail"]
    r = client.put("/v1/tier-policy", data="[1]", content_type="application/json",
                   headers=admin)
    assert r.status_code == 422
    assert client.get("/v1/tier-policy", headers=reader).json["version"] == 2


def test_tier_policy_cli(conn, cli_env, tmp_path):
    from click.testing import CliRunner

    from crm_service.cli import main

    r = CliRunner().invoke(main, ["tier-policy", "show"], catch_exceptions=False)
    assert r.exit_code == 0
    shown = json.loads(r.stdout)
    assert shown["version"] == 1 and shown["dormant_days"] == 180
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({**shown, "new_days": 14}), encoding="utf-8")
    r = CliRunner().invoke(main, ["tier-policy", "set", str(good)], catch_exceptions=False)
    assert r.exit_code == 0 and "version 2" in r.output
    for text, message in (('{"new_days": 0}', "new_days"), ("[1, 2]", "JSON object"),
                          ("{not json", "not a JSON file")):
        bad = tmp_path / "bad.json"
        bad.write_text(text, encoding="utf-8")
        r = CliRunner().invoke(main, ["tier-policy", "set", str(bad)])
        assert r.exit_code == 1 and message in r.output
    r = CliRunner().invoke(main, ["tier-policy", "show"], catch_exceptions=False)
    assert json.loads(r.stdout)["version"] == 2 and json.loads(r.stdout)["new_days"] == 14


def test_tier_history_and_hysteresis_across_two_runs(cdnow_loaded, settings, client,
                                                     make_token):
    first = run_scoring(cdnow_loaded, settings, as_of=date(1998, 3, 31))
    second = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    q = cdnow_loaded.execute
    # The first run of a database has nothing to change from: no transitions, since = as_of.
    assert q("SELECT count(*) FROM tier_transitions WHERE run_id = %s",
             (first.run_id,)).fetchone()[0] == 0
    assert q("SELECT count(*) FROM customer_scores WHERE run_id = %s"
             " AND tier_since <> '1998-03-31'", (first.run_id,)).fetchone()[0] == 0
    changed = q("SELECT count(*) FROM customer_scores n JOIN customer_scores p"
                " ON p.customer_id = n.customer_id AND p.run_id = %s"
                " WHERE n.run_id = %s AND n.tier <> p.tier",
                (first.run_id, second.run_id)).fetchone()[0]
    recorded = q("SELECT count(*) FROM tier_transitions WHERE run_id = %s",
                 (second.run_id,)).fetchone()[0]
    assert recorded == changed == second.counts["tier_changes"] > 0
    # Hysteresis: high-value customers of the first run who stayed in the top 15% of CLV
    # (among the eligible) kept the tier in the second.
    kept = q("SELECT count(*) FROM customer_scores n JOIN customer_scores p"
             " ON p.customer_id = n.customer_id AND p.run_id = %s AND p.tier = 'high_value'"
             " WHERE n.run_id = %s AND n.tier = 'high_value'",
             (first.run_id, second.run_id)).fetchone()[0]
    eligible = q("SELECT count(*) FROM customer_scores WHERE run_id = %s"
                 " AND tier IN ('active', 'high_value')", (second.run_id,)).fetchone()[0]
    high = second.counts["tiers"]["high_value"]
    assert high >= int(eligible * 0.10) and kept > 0
    token = {"Authorization": f"Bearer {make_token('scores:read')}"}
    mover = q("SELECT customer_id, to_tier FROM tier_transitions WHERE run_id = %s"
              " ORDER BY customer_id LIMIT 1", (second.run_id,)).fetchone()
    r = client.get(f"/v1/customers/{mover[0]}/tier", headers=token)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["tier"] == mover[1] and body["tier_since"] == "1998-06-30"
    assert [t["run_id"] for t in body["recent_transitions"]] == [second.run_id]
    assert body["recent_transitions"][0]["from_tier"] not in (None, mover[1])
    stayer = q("SELECT n.customer_id, n.tier FROM customer_scores n JOIN customer_scores p"
               " ON p.customer_id = n.customer_id AND p.run_id = %s"
               " WHERE n.run_id = %s AND n.tier = p.tier ORDER BY 1 LIMIT 1",
               (first.run_id, second.run_id)).fetchone()
    body = client.get(f"/v1/customers/{stayer[0]}/tier", headers=token).json
    assert body["tier"] == stayer[1] and body["tier_since"] == "1998-03-31"
    assert client.get("/v1/customers/nobody/tier", headers=token).status_code == 404
    assert client.get("/v1/customers/" + "y" * 300 + "/tier", headers=token).status_code == 422


def test_the_vocabulary_is_the_databases(conn):
    """Tiers, value segments, churn bands and event types are defined once in code, and the
    database's CHECK constraints allow exactly those."""
    import re

    from crm_service.vocabulary import ALIVE_NOTES, CHURN_RISKS, EVENT_TYPES, TIERS, VALUE_SEGMENTS

    def allowed(table: str, column: str) -> set[str]:
        rows = conn.execute(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid"
            " WHERE t.relname = %s AND c.contype = 'c' AND pg_get_constraintdef(c.oid) ~ %s",
            (table, rf"\m{column}\M")).fetchall()
        conn.rollback()
        assert len(rows) == 1, (table, column, rows)
        return set(re.findall(r"'([^']+)'::text", rows[0][0]))

    assert allowed("customer_scores", "tier") == set(TIERS)
    assert allowed("customer_scores", "value_segment") == set(VALUE_SEGMENTS)
    assert allowed("customer_scores", "churn_risk") == set(CHURN_RISKS)
    assert allowed("events", "type") == set(EVENT_TYPES)
    assert allowed("customer_scores", "p_alive_note") == set(ALIVE_NOTES)


def test_every_surface_takes_the_one_vocabulary():
    """The publish SQL writes exactly the run's event types, the console has words for every
    term in both languages, and a view cannot ask for a scope that does not exist."""
    import re

    from api.auth import require
    from api.console.i18n import MESSAGES
    from crm_service.storage import publishing
    from crm_service.vocabulary import (
        ACTIONS,
        ALIVE_NOTES,
        CHURN_RISKS,
        EVENT_TYPES,
        RFM_SEGMENTS,
        RUN_EVENT_TYPES,
        TIERS,
        VALUE_SEGMENTS,
    )

    assert re.findall(r"\('([a-z_.]+)',", publishing._EVENT_TYPES) == list(RUN_EVENT_TYPES)
    assert set(EVENT_TYPES) - set(RUN_EVENT_TYPES) == {"customer.erased", "customer.merged",
                                                       "customer.unmerged"}
    for prefix, terms in (("tier", TIERS), ("value", VALUE_SEGMENTS), ("risk", CHURN_RISKS),
                          ("rfm", RFM_SEGMENTS), ("action", ACTIONS), ("script", ACTIONS),
                          ("alive_note", ALIVE_NOTES)):
        for term in terms:
            english, chinese = MESSAGES[f"{prefix}.{term}"]
            assert english and chinese, (prefix, term)
    with pytest.raises(ValueError, match="unknown scope"):
        require("score:read")
