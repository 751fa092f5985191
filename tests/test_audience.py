"""GET /v1/customers: filters, keyset paging without gaps or repeats, CSV equal to the pages."""

import csv
import io
from datetime import date

import pytest

from crm_service.scoring import run_scoring


@pytest.fixture()
def scored(cdnow_loaded, settings):
    return run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))


@pytest.fixture()
def token(make_token):
    return {"Authorization": f"Bearer {make_token('scores:read')}"}


def all_pages(client, token, query):
    ids, cursor = [], None
    while True:
        r = client.get("/v1/customers", query_string={**query, "limit": 150,
                                                       **({"cursor": cursor} if cursor else {})},
                       headers=token)
        assert r.status_code == 200, r.json
        ids += [c["customer_id"] for c in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            return ids


def test_paging_has_no_gaps_or_repeats_and_csv_equals_it(scored, cdnow_loaded, client, token):
    ids = all_pages(client, token, {})
    assert len(ids) == len(set(ids)) == 2357 and ids == sorted(ids)
    r = client.get("/v1/customers", headers={**token, "Accept": "text/csv"})
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["customer_id"] for row in rows] == ids


@pytest.mark.parametrize("query", [
    {"tier": "dormant"}, {"value_segment": "high"}, {"rfm_segment": "champions"},
    {"churn_risk": "low"}, {"min_clv": 100}, {"max_clv": 5}, {"min_p_alive": 0.5},
    {"last_purchase_before": "1997-06-01"}, {"last_purchase_after": "1998-03-01"},
    {"tier": "active", "churn_risk": "high", "min_clv": 10},
])
def test_each_filter(scored, cdnow_loaded, client, token, query):
    conds = {
        "tier": "tier = %(tier)s", "value_segment": "value_segment = %(value_segment)s",
        "rfm_segment": "rfm_segment = %(rfm_segment)s", "churn_risk": "churn_risk = %(churn_risk)s",
        "min_clv": "clv_12m >= %(min_clv)s", "max_clv": "clv_12m <= %(max_clv)s",
        "min_p_alive": "p_alive >= %(min_p_alive)s",
        "last_purchase_before": "last_purchase < %(last_purchase_before)s",
        "last_purchase_after": "last_purchase > %(last_purchase_after)s",
    }
    where = " AND ".join(conds[k] for k in query)
    expected = [r[0] for r in cdnow_loaded.execute(
        f"SELECT customer_id FROM customer_scores WHERE run_id = %(run)s AND {where}"
        " ORDER BY customer_id", {**query, "run": scored.run_id}).fetchall()]
    assert expected, "the filter should select someone in the demo data"
    assert all_pages(client, token, query) == expected
    r = client.get("/v1/customers", query_string=query, headers={**token, "Accept": "text/csv"})
    assert [row["customer_id"] for row in csv.DictReader(io.StringIO(r.get_data(as_text=True)))
            ] == expected


def test_bad_queries_and_stale_cursors(scored, cdnow_loaded, settings, client, token):
    for query in ({"tier": "vip"}, {"limit": 0}, {"limit": 1001}, {"min_p_alive": 2},
                  {"last_purchase_before": "yesterday"}, {"cursor": "!!not-a-cursor"},
                  {"sort": "tier"}, {"sort": "clv"}, {"min_clv": "nan"}):
        r = client.get("/v1/customers", query_string=query, headers=token)
        assert r.status_code == 422, (query, r.status_code)
        assert r.mimetype == "application/problem+json"
    first = client.get("/v1/customers", query_string={"limit": 10}, headers=token).json
    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 29))
    r = client.get("/v1/customers", query_string={"cursor": first["next_cursor"]}, headers=token)
    assert r.status_code == 422 and "start again" in r.json["detail"]
    by_clv = client.get("/v1/customers", query_string={"limit": 10, "sort": "-clv_12m"},
                        headers=token).json
    r = client.get("/v1/customers", query_string={"cursor": by_clv["next_cursor"]},
                   headers=token)
    assert r.status_code == 422 and "sort=-clv_12m" in r.json["detail"]


SORT_SQL = {"clv_12m": "clv_12m", "churn_probability": "churn_probability",
            "p_alive": "p_alive", "historic_spend": "historic_spend",
            "last_purchase": "last_purchase"}


@pytest.mark.parametrize("sort", ["-clv_12m", "clv_12m", "-churn_probability", "p_alive",
                                  "-historic_spend", "last_purchase", "-last_purchase"])
def test_sorted_pages_follow_sql_order_without_gaps_and_csv_equals_them(
        scored, cdnow_loaded, client, token, sort):
    column = SORT_SQL[sort.lstrip("-")]
    direction = "DESC" if sort.startswith("-") else "ASC"
    query = {"tier": "active"} if "clv" in sort else {}
    where = "AND tier = 'active'" if query else ""
    expected = [r[0] for r in cdnow_loaded.execute(
        f"SELECT customer_id FROM customer_scores WHERE run_id = %s {where}"
        f" ORDER BY {column} {direction}, customer_id {direction}",
        (scored.run_id,)).fetchall()]
    cdnow_loaded.commit()
    ids = all_pages(client, token, {**query, "sort": sort})
    assert ids == expected and len(set(ids)) == len(ids)
    r = client.get("/v1/customers", query_string={**query, "sort": sort},
                   headers={**token, "Accept": "text/csv"})
    assert [row["customer_id"] for row in csv.DictReader(io.StringIO(r.get_data(as_text=True)))
            ] == expected


def test_no_run_yet_is_404_also_for_csv(conn, client, token):
    assert client.get("/v1/customers", headers=token).status_code == 404
    r = client.get("/v1/customers", headers={**token, "Accept": "text/csv"})
    assert r.status_code == 404 and r.mimetype == "application/problem+json"


def test_segments_summary_and_transition_matrix(cdnow_loaded, settings, client, token):
    assert client.get("/v1/segments", headers=token).status_code == 404
    first = run_scoring(cdnow_loaded, settings, as_of=date(1998, 3, 31))
    body = client.get("/v1/segments", headers=token).json
    assert body["run_id"] == first.run_id and body["tier_transitions"] is None
    assert sum(v["customers"] for v in body["by_tier"].values()) == 2357
    assert sum(v["customers"] for v in body["by_rfm_segment"].values()) == 2357
    total = cdnow_loaded.execute(
        "SELECT sum(historic_spend), sum(clv_12m) FROM customer_scores WHERE run_id = %s",
        (first.run_id,)).fetchone()
    cdnow_loaded.commit()
    assert sum(v["historic_spend"] for v in body["by_value_segment"].values()) == \
        pytest.approx(float(total[0]), abs=0.05)
    assert sum(v["clv_12m"] for v in body["by_tier"].values()) == pytest.approx(total[1],
                                                                                rel=1e-6)
    second = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    body = client.get("/v1/segments", headers=token).json
    matrix = body["tier_transitions"]
    expected = cdnow_loaded.execute(
        "SELECT p.tier, n.tier, count(*) FROM customer_scores n JOIN customer_scores p"
        " ON p.customer_id = n.customer_id AND p.run_id = %s WHERE n.run_id = %s"
        " GROUP BY 1, 2", (first.run_id, second.run_id)).fetchall()
    assert {(a, b): n for a, b, n in expected} == {
        (a, b): n for a, row in matrix.items() for b, n in row.items()}
