"""GET /metrics: Prometheus text format after real traffic, parsed with prometheus_client's own
parser; protected by the metrics:read scope; summed over processes in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from crm_service.scoring import run_scoring
from tests.conftest import TEST_SECRET_KEY

TIER_ROUTE = "/v1/customers/<customer_id:customer_id>/tier"


def scrape(client, headers) -> dict[str, list]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.data
    assert r.content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f.samples for f in text_string_to_metric_families(r.data.decode())}
    return families


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name
             and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_metrics_after_real_traffic(cdnow_loaded, client, make_token, settings, dsn):
    with psycopg.connect(dsn) as c:
        run = run_scoring(c, settings, as_of=date(1998, 6, 30))
    scraper = {"Authorization": f"Bearer {make_token('metrics:read')}"}
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    before = scrape(client, scraper)["crm_http_requests"]

    for n in range(1, 11):
        assert client.get(f"/v1/customers/cdnow-{n:04d}/tier", headers=reader).status_code == 200
    assert client.get("/v1/customers/nobody-here/tier", headers=reader).status_code == 404
    assert client.get("/v1/segments", headers=reader).status_code == 200
    assert client.get("/v1/segments").status_code == 401
    assert client.get("/no/such/path/cdnow-0001").status_code == 404
    fam = scrape(client, scraper)

    http = fam["crm_http_requests"]
    def delta(**labels):
        return (value(http, "crm_http_requests_total", **labels)
                - value(before, "crm_http_requests_total", **labels))
    assert delta(method="GET", route=TIER_ROUTE, status="200") == 10  # the lookup lane's
    assert delta(method="GET", route=TIER_ROUTE, status="404") == 1  # Flask's
    assert delta(method="GET", route="/v1/segments", status="200") == 1
    assert delta(method="GET", route="/v1/segments", status="401") == 1
    assert delta(method="GET", route="(no route)", status="404") == 1
    latency = fam["crm_http_request_duration_seconds"]
    assert value(latency, "crm_http_request_duration_seconds_count", route=TIER_ROUTE,
                 status="200") >= 10
    assert value(latency, "crm_http_request_duration_seconds_bucket", route=TIER_ROUTE,
                 status="200", le="+Inf") >= 10
    # A request refused by authentication is timed too.
    assert value(latency, "crm_http_request_duration_seconds_count", route="/v1/segments",
                 status="401") == value(http, "crm_http_requests_total", route="/v1/segments",
                                        status="401")

    assert value(fam["crm_database_up"], "crm_database_up") == 1
    runs = fam["crm_scoring_runs"]
    assert value(runs, "crm_scoring_runs", status="succeeded", kind="run") == 1
    assert value(runs, "crm_scoring_runs", status="failed") == 0
    assert value(fam["crm_live_run_id"], "crm_live_run_id") == run.run_id
    tiers = {s.labels["tier"]: s.value for s in fam["crm_live_customers_by_tier"]}
    assert tiers == {k: float(v) for k, v in run.counts["tiers"].items()}
    assert sum(tiers.values()) == 2357
    bands = {s.labels["risk"]: s.value for s in fam["crm_live_customers_by_churn_risk"]}
    assert sum(bands.values()) == 2357 and set(bands) <= {"low", "medium", "high"}
    stages = {s.labels["stage"] for s in fam["crm_scoring_last_run_stage_seconds"]}
    assert {"publish", "write_scores"} <= stages
    assert value(fam["crm_webhook_queue_depth"], "crm_webhook_queue_depth",
                 stage="pending_deliveries") == 0
    assert "crm_webhook_oldest_undelivered_age_seconds" in fam
    pools = fam["crm_db_pool_connections"]
    assert {s.labels["pool"] for s in pools} == {"writer", "reader", "lane"}

    # No customer id, email, phone or key in any label.
    for samples in fam.values():
        for s in samples:
            for v in s.labels.values():
                assert "cdnow" not in v and "@" not in v and not v.startswith("crm_"), s


def test_metrics_need_the_scope(client, make_token):
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", headers={"Authorization": f"Bearer {make_token('scores:read')}"})
    assert r.status_code == 403 and r.content_type == "application/problem+json"
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert client.get("/metrics", headers=admin).status_code == 200


def test_webhook_delivery_outcomes_are_counted(conn, client, make_token):
    from crm_service.platform import metrics

    scraper = {"Authorization": f"Bearer {make_token('metrics:read')}"}
    before = scrape(client, scraper).get("crm_webhook_delivery_attempts", [])
    for outcome in ("delivered", "delivered", "pending", "failed"):
        metrics.record_delivery(outcome)
    after = scrape(client, scraper)["crm_webhook_delivery_attempts"]
    name = "crm_webhook_delivery_attempts_total"
    for outcome, n in (("delivered", 2), ("retrying", 1), ("failed", 1)):
        assert value(after, name, outcome=outcome) - value(before, name, outcome=outcome) == n


def test_a_database_that_is_down_still_scrapes(client, make_token, app):
    from crm_service.platform import metrics

    def broken():
        raise psycopg.OperationalError("connection refused")

    body = metrics.render(broken, {}).decode()
    fam = {f.name: f.samples for f in text_string_to_metric_families(body)}
    assert value(fam["crm_database_up"], "crm_database_up") == 0
    assert "crm_http_requests" in fam


SCRIPT = textwrap.dedent("""
    import sys
    from api import create_app
    from crm_service.access import api_keys
    from crm_service.platform.config import load_settings
    import psycopg

    settings = load_settings()
    app = create_app(settings)
    with psycopg.connect(settings.database_url) as c:
        _, token = api_keys.create_key(c, "mp", ["admin"])
        c.commit()
    client = app.test_client()
    for _ in range(int(sys.argv[1])):
        client.get("/v1/segments", headers={"Authorization": f"Bearer {token}"})
    if sys.argv[2] == "scrape":
        sys.stdout.write(client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                         .data.decode())
""")


def test_multiprocess_mode_sums_every_process(conn, dsn, tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(folder), DATABASE_URL=dsn,
               CRM_SECRET_KEY=TEST_SECRET_KEY, CRM_RATE_LIMIT_PER_SECOND="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for n in (3, 4):  # two processes (two gunicorn workers, say) that have gone
        subprocess.run([sys.executable, "-c", SCRIPT, str(n), "no"], env=env, check=True,
                       timeout=120)
    out = subprocess.run([sys.executable, "-c", SCRIPT, "5", "scrape"], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    fam = {f.name: f.samples for f in text_string_to_metric_families(out)}
    assert value(fam["crm_http_requests"], "crm_http_requests_total", route="/v1/segments",
                 status="404") == 12  # no run published: 3 + 4 + 5, from three processes
    assert value(fam["crm_database_up"], "crm_database_up") == 1


def test_invented_methods_share_one_label(client, make_token):
    scraper = {"Authorization": f"Bearer {make_token('metrics:read')}"}
    for method in ("BREW", "XYZZY", "PROPFIND"):
        client.open("/v1/segments", method=method)
    http = scrape(client, scraper)["crm_http_requests"]
    methods = {s.labels["method"] for s in http}
    assert "other" in methods and not methods & {"BREW", "XYZZY", "PROPFIND"}
