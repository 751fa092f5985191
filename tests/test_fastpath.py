"""The lookup fast lane (api.serving.fastpath): the same answers as the Flask views, without Flask.

In-process through the app (the lane wraps ``app.wsgi_app``) on the embedded PostgreSQL; the
keep-alive worker that batches the lane's lookups is tested over real HTTP in
tests/test_keepalive_worker.py.
"""

import dataclasses
import json
import logging
from datetime import date

import pytest
from werkzeug.test import Client, EnvironBuilder

from api import create_app
from api.serving.fastpath import CARD, MISSING, LookupLane, lookup_of
from crm_service.scoring import run_scoring


@pytest.fixture()
def scored(cdnow_loaded, settings):
    return run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))


@pytest.fixture()
def lane(app) -> LookupLane:
    assert isinstance(app.wsgi_app, LookupLane)
    return app.wsgi_app


@pytest.fixture()
def fallbacks(lane, monkeypatch) -> list[str]:
    """The paths the lane handed to Flask."""
    seen: list[str] = []
    flask_app = lane.fallback

    def counting(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    monkeypatch.setattr(lane, "fallback", counting)
    return seen


def ids(conn, run_id, n):
    """Up to ``n`` scored customers of the run, taken from every tier in turn."""
    rows = conn.execute(
        "SELECT customer_id FROM (SELECT customer_id, row_number() OVER (PARTITION BY tier"
        " ORDER BY customer_id) AS k FROM customer_scores WHERE run_id = %s) x"
        " ORDER BY k, customer_id LIMIT %s", (run_id, n)).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def test_lane_answers_what_the_flask_views_answer(scored, cdnow_loaded, lane, client,
                                                    make_token, fallbacks):
    """Body (parsed), status and header names equal the Flask views', for every tier, for
    /tier and the profile, with and without contact details."""
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    agent = {"Authorization": f"Bearer {make_token('customers:read')}"}
    flask_only = Client(lane.fallback)  # the Flask views alone (through the counter)
    some = ids(cdnow_loaded, scored.run_id, 40)
    r = client.post("/v1/customers", headers={"Authorization": f"Bearer {make_token()}"},
                    json={"customers": [{
                        "customer_id": cid, "email": f"{cid}@Example.com",
                        "phone": "+86 138 0000 0001", "name": "李 \"伟\" \\ Lee",
                        "identities": [{"channel": "tmall", "external_id": f"tb_{cid}"},
                                       {"channel": "jd", "external_id": f"jd_{cid}"}]}
                        for cid in some[::2]]})
    assert r.status_code == 200

    def compare(run_id):
        customers = ids(cdnow_loaded, run_id, 300)
        answers = []
        for cid in customers:
            for path, headers in ((f"/v1/customers/{cid}/tier", reader),
                                  (f"/v1/customers/{cid}", reader),
                                  (f"/v1/customers/{cid}", agent)):
                fast = client.get(path, headers=headers)
                slow = flask_only.get(path, headers=headers)
                assert fast.status_code == slow.status_code == 200
                assert fast.json == slow.json, path
                assert sorted(fast.headers.keys()) == sorted(slow.headers.keys())
                assert fast.headers["Content-Type"] == slow.headers["Content-Type"]
                assert int(fast.headers["Content-Length"]) == len(fast.data)
                answers.append(fast.json)
        return customers, answers

    customers, first = compare(scored.run_id)
    assert {a["tier"] for a in first} >= {"active", "dormant", "high_value"}
    with_contact = [a for a in first if a.get("contact") and a["contact"]["email"]]
    assert len(with_contact) == 20 and all(len(a["identities"]) == 2 for a in with_contact)
    assert all(a["contact"]["name"] == '李 "伟" \\ Lee' for a in with_contact)
    plain = client.get(f"/v1/customers/{some[0]}", headers=reader).json
    assert plain["contact"] is None and plain["identities"] is None
    # A second run half a year later: tiers change and transitions are recorded.
    second = run_scoring(cdnow_loaded, lane.services.settings, as_of=date(1998, 12, 31),
                         allow_stale=True)  # half a year past the data, on purpose
    customers2, answers = compare(second.run_id)
    assert any(a["recent_transitions"] for a in answers)
    assert {a["run_id"] for a in answers} == {second.run_id}
    # Flask saw only the reference requests (and the POST), not the lane's.
    assert len(fallbacks) == len(first) + len(answers) + 1


def test_lane_leaves_errors_and_provisional_answers_to_flask(scored, cdnow_loaded, client,
                                                               make_token, fallbacks):
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    cid = ids(cdnow_loaded, scored.run_id, 1)[0]
    assert client.get(f"/v1/customers/{cid}/tier", headers=reader).status_code == 200
    assert fallbacks == []
    cases = [
        (f"/v1/customers/{cid}/tier", {}, 401),
        (f"/v1/customers/{cid}/tier", {"Authorization": "Bearer crm_nope_nope"}, 401),
        (f"/v1/customers/{cid}/tier",
         {"Authorization": f"Bearer {make_token('orders:write')}"}, 403),
        ("/v1/customers/nobody/tier", reader, 404),
        ("/v1/customers/a%01b/tier", reader, 422),
    ]
    for path, headers, status in cases:
        r = client.get(path, headers=headers)
        assert r.status_code == status, path
        assert r.mimetype == "application/problem+json"
    assert len(fallbacks) == len(cases)
    # Orders after the run: the answer is provisional, computed by the Flask view.
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    r = client.post("/v1/orders", headers=admin, json={"orders": [{
        "order_id": "late-1", "customer_id": cid, "channel": "web",
        "ordered_at": "1998-07-03", "amount": 20}]})
    assert r.status_code == 200
    before = len(fallbacks)
    body = client.get(f"/v1/customers/{cid}/tier", headers=reader).json
    assert body["provisional"] is True and body["provisional_as_of"] == "1998-07-03"
    assert len(fallbacks) == before + 1
    profile = client.get(f"/v1/customers/{cid}", headers=reader)
    assert profile.status_code == 200 and profile.json["provisional"] is True
    assert profile.json["scores"]["churn_model"] == "btyd_baseline"
    assert len(fallbacks) == before + 2
    for path, headers, status in [
            ("/v1/customers/nobody", reader, 404),
            (f"/v1/customers/{cid}", {"Authorization": f"Bearer {make_token('orders:write')}"},
             403),
            (f"/v1/customers/{cid}", {}, 401),
            ("/v1/customers/" + "x" * 200, reader, 422)]:
        r = client.get(path, headers=headers)
        assert r.status_code == status and r.mimetype == "application/problem+json", path
    # HEAD and other methods are Flask's too.
    assert client.head(f"/v1/customers/{cid}/tier", headers=reader).status_code == 200
    assert client.post(f"/v1/customers/{cid}/tier", headers=reader).status_code == 405


def test_lane_request_log_line_has_the_route_template_not_the_id(scored, cdnow_loaded, client,
                                                                  make_token, caplog):
    cid = ids(cdnow_loaded, scored.run_id, 1)[0]
    token = make_token("scores:read")
    with caplog.at_level(logging.INFO, logger="crm.request"):
        r = client.get(f"/v1/customers/{cid}/tier",
                       headers={"Authorization": f"Bearer {token}", "X-Request-Id": "abc-123"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "abc-123"
    (line,) = [x for x in caplog.records if x.getMessage() == "request"]
    assert line.route == "/v1/customers/<customer_id:customer_id>/tier" and line.status == 200
    assert line.request_id == "abc-123" and line.method == "GET" and line.duration_ms >= 0
    assert line.key_id and token not in caplog.text and cid not in caplog.text


def test_lane_spends_one_rate_limit_token_per_request(scored, cdnow_loaded, settings, dsn,
                                                      make_token, tmp_path):
    limited = create_app(dataclasses.replace(
        settings, rate_limit_per_second=0.001, rate_limit_burst=3,
        rate_limit_file=tmp_path / "buckets"), dsn=dsn)
    client = limited.test_client()
    headers = {"Authorization": f"Bearer {make_token('scores:read')}"}
    cid = ids(cdnow_loaded, scored.run_id, 1)[0]
    # Answered by the lane, by Flask after the lane (unknown customer), by the lane: 3 tokens.
    assert [client.get(p, headers=headers).status_code for p in (
        f"/v1/customers/{cid}/tier", "/v1/customers/nobody/tier",
        f"/v1/customers/{cid}/tier")] == [200, 404, 200]
    r = client.get(f"/v1/customers/{cid}/tier", headers=headers)
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1


def environ_for(path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return EnvironBuilder(path=path, headers=headers).get_environ()


def test_prefetch_looks_up_only_requests_with_a_verified_key(scored, cdnow_loaded, lane, client,
                                                             make_token):
    token = make_token("scores:read")
    a, b = ids(cdnow_loaded, scored.run_id, 2)
    stranger = make_token("scores:read")  # valid, but not yet verified by this process
    assert client.get(f"/v1/customers/{a}/tier",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200
    batch = [environ_for(f"/v1/customers/{a}/tier", token),
             environ_for(f"/v1/customers/{b}/tier", token),
             environ_for("/v1/customers/nobody/tier", token),
             environ_for(f"/v1/customers/{b}/tier", stranger),
             environ_for(f"/v1/customers/{b}/tier"),
             environ_for(f"/v1/customers/{b}", token)]
    lane.prefetch(batch)
    assert json.loads(batch[0][CARD])["customer_id"] == a
    assert json.loads(batch[1][CARD])["customer_id"] == b
    assert batch[2][CARD] is MISSING
    assert all(CARD not in e for e in batch[3:5])
    assert json.loads(batch[5][CARD])["scores"]["tier"]  # the profile, in its own statement
    # The prefetched card is what the lane answers with.
    assert json.loads(batch[1][CARD]) == client.get(
        f"/v1/customers/{b}/tier", headers={"Authorization": f"Bearer {token}"}).json


@pytest.mark.parametrize(("method", "script", "path", "expected"), [
    ("GET", "", "/v1/customers/C-1/tier", ("tier", "C-1")),
    ("GET", "", "/v1/customers/C-1", ("profile", "C-1")),
    ("GET", "", "/v1/customers/tier", ("profile", "tier")),
    ("GET", "", "/v1/customers/tier/tier", ("tier", "tier")),
    ("GET", "", "/v1/customers/" + "客户".encode().decode("latin-1") + "/tier", ("tier", "客户")),
    ("GET", "", "/v1/customers/\xff\xfe/tier", None),  # not UTF-8
    ("GET", "", "/v1/customers/search/tier", None),
    ("GET", "", "/v1/customers/search", None),
    ("GET", "", "/v1/customers/", None),
    ("GET", "", "/v1/customers", None),
    ("GET", "", "/v1/customers//tier", None),
    ("GET", "", "/v1/customers/a/b/tier", None),
    ("GET", "", "/v1/customers/C-1/scores", None),
    ("GET", "", "/v1/customers/C-1/export", None),
    ("GET", "", "/v1/customers/a\x01/tier", None),
    ("GET", "", "/v1/customers/" + "x" * 129 + "/tier", None),
    ("GET", "", "/v1/customers/C-1/tier/", None),
    ("HEAD", "", "/v1/customers/C-1/tier", None),
    ("DELETE", "", "/v1/customers/C-1", None),
    ("GET", "/crm", "/v1/customers/C-1/tier", None),
])
def test_which_requests_the_lane_takes(method, script, path, expected):
    environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": script, "PATH_INFO": path}
    assert lookup_of(environ) == expected
