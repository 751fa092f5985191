"""GET /v1/customers/{id}, /tier with provisional answers, and /v1/customers/search."""

from datetime import date

import pytest

from crm_service.customers import profiles
from crm_service.scoring import run_scoring


@pytest.fixture()
def scored(cdnow_loaded, settings):
    return run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))


def bearer(make_token, *scopes):
    return {"Authorization": f"Bearer {make_token(*scopes)}"}


def post_orders(client, auth, orders):
    r = client.post("/v1/orders", json={"orders": orders}, headers=auth)
    assert r.status_code == 200 and all(x["outcome"] != "rejected" for x in r.json["results"]), \
        r.json
    return r


def one(conn, sql, *params):
    row = conn.execute(sql, params).fetchone()
    conn.commit()
    return row


def test_profile_shows_orders_per_channel_scores_and_pii_only_with_customers_read(
        scored, cdnow_loaded, client, auth, make_token):
    cid = one(cdnow_loaded, "SELECT customer_id FROM customer_scores WHERE run_id = %s"
              " AND frequency >= 3 ORDER BY customer_id LIMIT 1", scored.run_id)[0]
    r = client.post("/v1/customers", json={"customers": [{
        "customer_id": cid, "email": "Li.Wei@Example.com", "phone": "+86 138-0013-8000",
        "name": "Li Wei", "identities": [{"channel": "jd", "external_id": "jd_88231"}]}]},
        headers=auth)
    assert r.status_code == 200
    reader = bearer(make_token, "scores:read")
    agent = bearer(make_token, "customers:read")
    body = client.get(f"/v1/customers/{cid}", headers=reader).json
    assert body["contact"] is None and body["identities"] is None
    assert "Li Wei" not in str(body) and "jd_88231" not in str(body)
    full = client.get(f"/v1/customers/{cid}", headers=agent).json
    assert full["contact"] == {"email": "Li.Wei@Example.com", "phone": "+86 138-0013-8000",
                               "name": "Li Wei"}
    assert full["identities"] == [{"channel": "jd", "external_id": "jd_88231"}]
    # Order summary per channel equals the orders table.
    expected = one(cdnow_loaded, "SELECT channel, count(*), sum(amount) FROM orders"
                   " WHERE customer_id = %s AND status = 'paid' GROUP BY channel", cid)
    (channel,) = full["orders_by_channel"]
    assert (channel["channel"], channel["paid_orders"]) == expected[:2]
    assert channel["net_spend"] == pytest.approx(float(expected[2]))
    # Every score of the live run, the tier fields, and the run.
    scores = client.get(f"/v1/customers/{cid}/scores", headers=reader).json
    assert full["run_id"] == scored.run_id and full["as_of"] == "1998-06-30"
    assert full["provisional"] is False and full["scored_at"]
    for key in ("p_alive", "clv_12m", "churn_probability", "expected_purchases_90",
                "rfm_segment", "tier"):
        assert full["scores"][key] == scores[key]
    assert full["tier"] == scores["tier"] and full["recommended_action"]
    assert client.get("/v1/customers/nobody", headers=agent).status_code == 404
    assert client.get("/v1/customers/" + "x" * 200, headers=agent).status_code == 422
    r = client.get(f"/v1/customers/{cid}", headers=bearer(make_token, "orders:write"))
    assert r.status_code == 403 and r.mimetype == "application/problem+json"
    assert client.get(f"/v1/customers/{cid}").status_code == 401


def test_profile_before_any_run_has_no_scores(conn, client, auth):
    client.post("/v1/customers", json={"customers": [{"customer_id": "C1", "name": "A"}]},
                headers=auth)
    body = client.get("/v1/customers/C1", headers=auth).json
    assert body["run_id"] is None and body["scores"] is None and body["tier"] is None
    assert body["orders_by_channel"] == [] and body["contact"]["name"] == "A"


def test_provisional_tier_for_new_orders_matches_the_next_run(
        scored, cdnow_loaded, settings, client, auth, make_token):
    reader = bearer(make_token, "scores:read")
    dormant, old_tier = one(
        cdnow_loaded, "SELECT customer_id, tier FROM customer_scores WHERE run_id = %s"
        " AND tier = 'dormant' AND value_segment = 'low' ORDER BY customer_id LIMIT 1",
        scored.run_id)
    steady = one(cdnow_loaded, "SELECT customer_id, tier FROM customer_scores"
                 " WHERE run_id = %s AND customer_id > %s ORDER BY customer_id LIMIT 1",
                 scored.run_id, dormant)
    before = client.get(f"/v1/customers/{dormant}/tier", headers=reader).json
    assert before["tier"] == "dormant" and before["provisional"] is False
    assert client.get("/v1/customers/fresh-1/tier", headers=reader).status_code == 404
    post_orders(client, auth, [
        {"order_id": "late-1", "customer_id": dormant, "channel": "tmall",
         "ordered_at": "1998-07-05T10:00:00", "amount": 25},
        {"order_id": "late-2", "customer_id": "fresh-1", "channel": "jd",
         "ordered_at": "1998-07-03T09:00:00", "amount": 40},
    ])
    back = client.get(f"/v1/customers/{dormant}/tier", headers=reader).json
    assert back["provisional"] is True and back["provisional_as_of"] == "1998-07-05"
    assert back["tier"] in ("active", "high_value") and back["tier_since"] == "1998-07-05"
    assert back["churn_probability"] < before["churn_probability"]
    fresh = client.get("/v1/customers/fresh-1/tier", headers=reader).json
    assert fresh["provisional"] is True and fresh["tier"] == "new"
    assert fresh["recommended_action"] == "welcome_second_purchase"
    assert fresh["tier_since"] == "1998-07-03"
    body = client.get(f"/v1/customers/{steady[0]}/tier", headers=reader).json
    assert body["provisional"] is False and body["tier"] == steady[1]
    profile = client.get(f"/v1/customers/{dormant}", headers=reader).json
    assert profile["provisional"] is True and profile["scores"]["churn_model"] == "btyd_baseline"
    assert {c["channel"] for c in profile["orders_by_channel"]} == {"web", "tmall"}
    # The next run agrees with the provisional answers.
    run_scoring(cdnow_loaded, settings, as_of=date(1998, 7, 5))
    for cid, provisional in ((dormant, back), ("fresh-1", fresh)):
        after = client.get(f"/v1/customers/{cid}/tier", headers=reader).json
        assert after["provisional"] is False
        assert (after["tier"], after["value_segment"]) == \
            (provisional["tier"], provisional["value_segment"])
        assert after["clv_12m"] == pytest.approx(provisional["clv_12m"], rel=0.05)
    assert old_tier == "dormant"


def test_a_refund_after_the_run_makes_the_answer_provisional(
        scored, cdnow_loaded, client, auth, make_token):
    reader = bearer(make_token, "scores:read")
    post_orders(client, auth, [{"order_id": "r-1", "customer_id": "solo", "channel": "web",
                                "ordered_at": "1998-06-01", "amount": 10}])
    assert client.get("/v1/customers/solo/tier", headers=reader).json["tier"] == "new"
    post_orders(client, auth, [{"order_id": "r-1", "customer_id": "solo", "channel": "web",
                                "ordered_at": "1998-06-01", "amount": 10,
                                "status": "refunded"}])
    r = client.get("/v1/customers/solo/tier", headers=reader)
    assert r.status_code == 404 and "no paid order" in r.json["detail"]
    body = client.get("/v1/customers/solo", headers=reader).json
    assert body["provisional"] is True and body["scores"] is None
    assert body["orders_by_channel"][0]["refunded_orders"] == 1


def test_search_by_email_phone_and_identity_after_normalisation(
        scored, conn, client, auth, make_token):
    client.post("/v1/customers", json={"customers": [
        {"customer_id": "cdnow-0001", "email": "Li.Wei@Example.com",
         "phone": "+86 138-0013-8000", "identities": [{"channel": "jd", "external_id": "j1"}]},
        {"customer_id": "C-2", "email": "li.wei@example.com"},
    ]}, headers=auth)
    agent = bearer(make_token, "customers:read")

    def ids(**query):
        r = client.get("/v1/customers/search", query_string=query, headers=agent)
        assert r.status_code == 200, r.json
        return [m["customer_id"] for m in r.json["matches"]]

    # One email, so one person (the linking rules, on by default): C-2 is now an alias.
    assert ids(email="  LI.WEI@example.COM ") == ["cdnow-0001"]
    assert ids(phone="+86 13800138000") == ids(phone="0086 138 0013 8000") == ["cdnow-0001"]
    assert ids(phone="138 0013 8000") == []  # a national number: no country code configured
    assert ids(channel="JD", external_id="j1") == ["cdnow-0001"]
    assert ids(email="nobody@example.com") == [] and ids(channel="jd", external_id="x") == []
    r = client.get("/v1/customers/search", query_string={"email": "li.wei@example.com"},
                   headers=agent).json["matches"]
    assert r[0]["tier"] is not None and r[0]["merged_ids"] == ["C-2"]
    for bad in ({}, {"email": "not-an-email"}, {"phone": "12"},
                {"email": "a@b.co", "phone": "+8613800138000"}, {"channel": "jd"},
                {"external_id": "j1"}, {"email": "x" * 300}, {"nope": "1"}):
        r = client.get("/v1/customers/search", query_string=bad, headers=agent)
        assert r.status_code == 422 and r.mimetype == "application/problem+json", bad
    r = client.get("/v1/customers/search", query_string={"email": "a@b.co"},
                   headers=bearer(make_token, "scores:read"))
    assert r.status_code == 403


def test_lookup_reads_one_snapshot_and_caches_the_run_context(scored, cdnow_loaded):
    cid = one(cdnow_loaded, "SELECT customer_id FROM customer_scores WHERE run_id = %s"
              " LIMIT 1", scored.run_id)[0]
    found = profiles.lookup(cdnow_loaded, cid)
    assert found["run"]["run_id"] == scored.run_id and found["provisional"] is False
    assert profiles.lookup(cdnow_loaded, "nobody")["scores"] is None
    assert profiles.lookup(cdnow_loaded, "nobody", profile=True) is None


def test_search_by_national_phone_number_with_a_country_code(conn, settings, dsn, make_token):
    from dataclasses import replace

    from api import create_app

    client = create_app(replace(settings, phone_country_code="86"), dsn=dsn).test_client()
    admin = bearer(make_token, "admin")
    client.post("/v1/customers", json={"customers": [
        {"customer_id": "C-1", "phone": "+86 138-0013-8000"}]}, headers=admin)
    for typed in ("138 0013 8000", "86 138 0013 8000", "+8613800138000"):
        r = client.get("/v1/customers/search", query_string={"phone": typed}, headers=admin)
        assert [m["customer_id"] for m in r.json["matches"]] == ["C-1"], typed
