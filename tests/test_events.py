"""Lifecycle events written when a run is published, and the GET /v1/events feed."""

from datetime import date

import pytest

from crm_service.scoring import run_scoring
from tests.conftest import q


@pytest.fixture()
def two_runs(cdnow_loaded, settings):
    first = run_scoring(cdnow_loaded, settings, as_of=date(1998, 3, 31))
    second = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    return first, second


@pytest.fixture()
def reader(make_token):
    return {"Authorization": f"Bearer {make_token('scores:read')}"}


def test_first_run_emits_nothing_and_the_second_emits_each_change(two_runs, cdnow_loaded):
    first, second = two_runs
    assert q(cdnow_loaded, "SELECT count(*) FROM events WHERE run_id = %s", first.run_id)[0][0] \
        == 0
    pairs = "FROM customer_scores n LEFT JOIN customer_scores p ON p.run_id = %s" \
        " AND p.customer_id = n.customer_id WHERE n.run_id = %s"
    expected = {
        "tier.changed": f"SELECT n.customer_id {pairs} AND n.tier IS DISTINCT FROM p.tier",
        "vip.entered": f"SELECT n.customer_id {pairs} AND n.tier = 'high_value'"
                       " AND p.tier IS DISTINCT FROM 'high_value'",
        "vip.lost": f"SELECT n.customer_id {pairs} AND p.tier = 'high_value'"
                    " AND n.tier <> 'high_value'",
        "dormant.entered": f"SELECT n.customer_id {pairs} AND n.tier = 'dormant'"
                           " AND p.tier IS DISTINCT FROM 'dormant'",
        "churn_risk.raised": f"SELECT n.customer_id {pairs} AND (p.churn_risk, n.churn_risk)"
                             " IN (('low', 'medium'), ('low', 'high'), ('medium', 'high'))",
    }
    total = 0
    for kind, sql in expected.items():
        want = sorted(r[0] for r in q(cdnow_loaded, sql, first.run_id, second.run_id))
        got = sorted(r[0] for r in q(cdnow_loaded, "SELECT customer_id FROM events"
                                     " WHERE run_id = %s AND type = %s", second.run_id, kind))
        assert got == want, kind
        total += len(got)
    assert q(cdnow_loaded, "SELECT count(*) FROM events")[0][0] == total \
        == second.counts["events"] > 0
    # tier.changed is the tier history: the same customers as tier_transitions.
    assert q(cdnow_loaded, "SELECT count(*) FROM tier_transitions WHERE run_id = %s",
             second.run_id)[0][0] == len(q(cdnow_loaded, expected["tier.changed"],
                                          first.run_id, second.run_id))
    # dormant.entered carries the value segment (VIP win-back) and no personal data.
    data = q(cdnow_loaded, "SELECT data FROM events WHERE type = 'dormant.entered' LIMIT 1")[0][0]
    assert data["to_tier"] == "dormant" and data["value_segment"] in ("low", "medium", "high")
    assert not {"email", "phone", "name"} & set(data)


def test_feed_pages_in_order_without_gaps_filters_and_resumes(two_runs, cdnow_loaded, client,
                                                              reader):
    ids = [str(r[0]) for r in q(cdnow_loaded, "SELECT id FROM events ORDER BY id")]
    seen, cursor = [], None
    while True:
        query = {"limit": 97, **({"after": cursor} if cursor else {})}
        r = client.get("/v1/events", query_string=query, headers=reader)
        assert r.status_code == 200, r.json
        seen += [e["id"] for e in r.json["events"]]
        cursor = r.json["next_cursor"]
        if not r.json["has_more"]:
            break
    assert seen == ids and cursor == ids[-1]
    # Nothing new: the same cursor comes back, with no events.
    r = client.get("/v1/events", query_string={"after": cursor}, headers=reader).json
    assert r == {"events": [], "next_cursor": cursor, "has_more": False}
    vip = client.get("/v1/events", query_string={"types": "vip.entered,vip.lost",
                                                 "limit": 1000}, headers=reader).json
    assert {e["type"] for e in vip["events"]} <= {"vip.entered", "vip.lost"}
    assert len(vip["events"]) == q(cdnow_loaded, "SELECT count(*) FROM events WHERE type IN"
                                   " ('vip.entered', 'vip.lost')")[0][0]
    event = vip["events"][0]
    assert event["run_id"] == two_runs[1].run_id and event["data"]["customer_id"] == \
        event["customer_id"]
    # A third run appends after the cursor: a poller resumes where it stopped.
    before = q(cdnow_loaded, "SELECT max(id) FROM events")[0][0]
    third = run_scoring(cdnow_loaded, client.application.extensions["crm"].settings,
                        as_of=date(1998, 6, 15))
    newer = client.get("/v1/events", query_string={"after": cursor, "limit": 1000},
                       headers=reader).json["events"]
    assert newer and all(int(e["id"]) > before and e["run_id"] == third.run_id for e in newer)


def test_feed_rejects_bad_queries(conn, client, reader):
    for query in ({"after": "abc"}, {"after": "-1"}, {"types": "tier.changed,nope"},
                  {"limit": 0}, {"limit": 1001}, {"types": ","}):
        r = client.get("/v1/events", query_string=query, headers=reader)
        assert r.status_code == 422 and r.mimetype == "application/problem+json", query
    assert client.get("/v1/events").status_code == 401
    assert client.get("/v1/events", headers=reader).json == {
        "events": [], "next_cursor": "0", "has_more": False}
