"""Webhooks: subscriptions over the API, signed deliveries to real loopback receivers, retries,
disabling, the SSRF guard, and redelivery after a worker is killed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from crm_service.scoring import run_scoring
from crm_service.triggers import signing, webhooks
from crm_service.triggers.delivery import Dispatcher
from crm_service.vocabulary import EVENT_TYPES
from tests.conftest import TEST_SECRET_KEY, q


class Receiver:
    """A real HTTP server on 127.0.0.1; ``behaviour(n, headers)`` → (status, delay seconds)."""

    def __init__(self, behaviour: Callable[[int, dict[str, str]], tuple[int, float]] | None = None):
        self.behaviour = behaviour or (lambda n, h: (200, 0.0))
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    n = len(outer.received)
                    outer.received.append((headers, body))
                status, delay = outer.behaviour(n, headers)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?src=crm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(b) for _, b in self.received]


@pytest.fixture()
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(behaviour=None) -> Receiver:
        made.append(Receiver(behaviour))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture()
def fast(settings):
    """Settings for tests: short timeouts and backoff."""
    return dataclasses.replace(settings, webhook_timeout_seconds=1.0,
                               webhook_retry_base_seconds=0.1, webhook_retry_max_seconds=0.5,
                               webhook_concurrency=4)


@pytest.fixture()
def dispatch(dsn) -> Iterator[Callable[..., Dispatcher]]:
    started: list[Dispatcher] = []

    def start(s) -> Dispatcher:
        started.append(Dispatcher(lambda: psycopg.connect(dsn), s, poll_seconds=0.05).start())
        return started[-1]

    yield start
    for d in started:
        d.stop()


@pytest.fixture()
def hooks_auth(make_token):
    return {"Authorization": f"Bearer {make_token('webhooks:write')}"}


def emit(conn, n: int, kind: str = "vip.entered", tier: str = "high_value",
         segment: str = "high") -> list[int]:
    """Outbox events as a published run writes them (the outbox itself: test_events.py)."""
    rows = conn.execute(
        "INSERT INTO events (type, customer_id, run_id, data)"
        " SELECT %s, 'C' || g, NULL, jsonb_build_object('to_tier', %s::text,"
        " 'value_segment', %s::text) FROM generate_series(1, %s) g RETURNING id",
        (kind, tier, segment, n)).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def subscribe(client, auth, url, events=("vip.entered",), **extra):
    r = client.post("/v1/webhooks", json={"url": url, "events": list(events), **extra},
                    headers=auth)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def wait_for(cond, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- subscriptions and the SSRF guard -------------------------------------------------------

def test_create_list_get_delete(client, conn, hooks_auth, receiver):
    url = receiver().url
    hook = subscribe(client, hooks_auth, url, events=["dormant.entered", "vip.entered"],
                     filters={"value_segments": ["high"]}, description="VIP win-back")
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"
    assert hook["events"] == ["vip.entered", "dormant.entered"]
    # The secret is shown once, and stored encrypted: not in any column as text or bytes.
    listed = client.get("/v1/webhooks", headers=hooks_auth).get_json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    stored = q(conn, "SELECT secret_enc::text, row_to_json(w)::text FROM webhooks w")[0]
    assert hook["secret"] not in stored[1]
    assert hook["secret"].encode().hex() not in stored[0]
    one = client.get(f"/v1/webhooks/{hook['id']}", headers=hooks_auth)
    assert one.status_code == 200 and one.get_json()["deliveries"]["pending"] == 0
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=hooks_auth).status_code == 204
    for path in (f"/v1/webhooks/{hook['id']}", "/v1/webhooks/nope", "/v1/webhooks/1/deliveries"):
        r = client.get(path, headers=hooks_auth)
        assert r.status_code == 404 and r.mimetype == "application/problem+json"


@pytest.mark.parametrize(("url", "says"), [
    ("http://example.com/hook", "https"),
    ("https://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[::1]/hook", "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://localhost/hook", "loopback"),  # resolves to 127.0.0.1, but the host is not listed
    ("https://0.0.0.0/hook", "private"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("ftp://hooks.example.com/", "https"),
    ("https://hooks.example.com/#x", "fragment"),
    ("not a url", "https"),
    ("https://no-such-host.invalid/", "resolve"),
])
def test_refused_urls(client, hooks_auth, url, says):
    r = client.post("/v1/webhooks", json={"url": url, "events": ["vip.entered"]},
                    headers=hooks_auth)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert says in json.dumps(r.get_json())


@pytest.mark.parametrize("body", [
    {"url": "http://127.0.0.1:9/x"},
    {"url": "http://127.0.0.1:9/x", "events": []},
    {"url": "http://127.0.0.1:9/x", "events": ["tier.exploded"]},
    {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"], "filters": {"tiers": ["gold"]}},
    {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"], "filters": {"tiers": []}},
    {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"], "secret": "mine"},
    {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"], "status": "disabled"},
    {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"], "description": "x" * 201},
    {"url": 5, "events": ["vip.entered"]},
])
def test_bad_bodies_and_scopes(client, hooks_auth, make_token, conn, body):
    r = client.post("/v1/webhooks", json=body, headers=hooks_auth)
    assert r.status_code == 422, r.get_json()
    assert q(conn, "SELECT count(*) FROM webhooks")[0][0] == 0


def test_scopes(client, make_token):
    body = {"url": "http://127.0.0.1:9/x", "events": ["vip.entered"]}
    assert client.post("/v1/webhooks", json=body).status_code == 401
    reader = {"Authorization": f"Bearer {make_token('scores:read', 'customers:read')}"}
    assert client.post("/v1/webhooks", json=body, headers=reader).status_code == 403
    assert client.get("/v1/webhooks", headers=reader).status_code == 403


def test_sign_and_verify():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8yQQAl5R7Q8="
    body = b'{"id":"1","type":"vip.entered"}'
    sig = signing.sign(secret, "msg_1", 1_700_000_000, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
               "webhook-signature": sig}
    assert signing.verify(secret, headers, body, now=1_700_000_100)
    assert not signing.verify(secret, headers, body + b" ", now=1_700_000_100)
    assert not signing.verify(secret, headers, body, now=1_700_000_000 + 301)  # replay
    assert not signing.verify(secret, {**headers, "webhook-id": "msg_2"}, body,
                               now=1_700_000_100)
    # An independent computation of the documented scheme (README, "Webhooks").
    import base64
    import hashlib
    import hmac
    mac = hmac.new(base64.b64decode(secret[6:]), b"msg_1.1700000000." + body, hashlib.sha256)
    assert sig == "v1," + base64.b64encode(mac.digest()).decode()


# --- delivery --------------------------------------------------------------------------------

def test_two_scoring_runs_are_delivered_signed_and_filtered(
        client, cdnow_loaded, settings, fast, hooks_auth, receiver, dispatch):
    run_scoring(cdnow_loaded, settings, as_of=date(1998, 3, 31))
    everything, vip_winback = receiver(), receiver()
    all_hook = subscribe(client, hooks_auth, everything.url, events=list(EVENT_TYPES))
    vip_hook = subscribe(client, hooks_auth, vip_winback.url, events=["dormant.entered"],
                         filters={"value_segments": ["high"]})
    second = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    feed = q(cdnow_loaded, "SELECT id, type, customer_id, data FROM events ORDER BY id")
    assert len(feed) == second.counts["events"] > 100
    wanted = [r for r in feed if r[1] == "dormant.entered" and r[3]["value_segment"] == "high"]
    dispatch(fast)
    wait_for(lambda: len(everything.received) >= len(feed)
             and len(vip_winback.received) >= len(wanted), what="all deliveries")
    time.sleep(0.3)
    assert len(everything.received) == len(feed) and len(vip_winback.received) == len(wanted) > 0
    for rec, hook in ((everything, all_hook), (vip_winback, vip_hook)):
        ids = set()
        for headers, body in rec.received:
            assert signing.verify(hook["secret"], headers, body)
            assert not signing.verify(all_hook["secret"] if rec is vip_winback
                                       else vip_hook["secret"], headers, body)
            event = json.loads(body)
            assert headers["crm-event-type"] == event["type"]
            assert headers["crm-event-id"] == event["id"]
            ids.add(headers["webhook-id"])
        assert len(ids) == len(rec.received)  # one delivery id per event
    got = sorted((int(b["id"]), b["type"], b["customer_id"]) for b in everything.bodies())
    assert got == [(r[0], r[1], r[2]) for r in feed]
    assert sorted(int(b["id"]) for b in vip_winback.bodies()) == [r[0] for r in wanted]
    # The bodies are the feed's events.
    page = client.get("/v1/events?limit=5", headers=hooks_auth)
    assert page.status_code == 403  # the feed needs scores:read; compare with SQL instead
    sample = everything.bodies()[0]
    assert set(sample) == {"id", "type", "customer_id", "run_id", "occurred_at", "data"}
    state = client.get(f"/v1/webhooks/{all_hook['id']}", headers=hooks_auth).get_json()
    assert state["deliveries"] == {"pending": 0, "delivered": len(feed), "failed": 0}
    assert state["after_event"] == str(feed[-1][0])


def test_receiver_500_then_recovers(client, conn, fast, hooks_auth, receiver, dispatch):
    rec = receiver(lambda n, h: (500, 0) if n < 3 else (200, 0))
    hook = subscribe(client, hooks_auth, rec.url)
    ids = emit(conn, 5)
    dispatch(fast)
    wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_deliveries"
                       " WHERE status = 'delivered'")[0][0] == 5, what="recovery")
    # Three attempts failed (the sender threads work in parallel, so they may be different
    # events); each failed event was retried with the same delivery id until it arrived.
    assert len(rec.received) == 5 + 3
    by_event: dict[str, list[str]] = {}
    for h, b in rec.received:
        by_event.setdefault(json.loads(b)["id"], []).append(h["webhook-id"])
    assert sorted(by_event) == sorted(str(i) for i in ids)
    assert all(len(set(v)) == 1 for v in by_event.values())
    page = client.get(f"/v1/webhooks/{hook['id']}/deliveries?status=delivered",
                      headers=hooks_auth).get_json()["deliveries"]
    logs = [[a["status_code"] for a in d["attempt_log"]] for d in page]
    assert sum(log.count(500) for log in logs) == 3
    assert all(log[-1] == 200 and set(log[:-1]) <= {500} for log in logs)
    assert [d["attempts"] for d in page] == [len(log) for log in logs]
    state = client.get(f"/v1/webhooks/{hook['id']}", headers=hooks_auth).get_json()
    assert state["status"] == "active" and state["consecutive_failures"] == 0


def test_a_slow_receiver_does_not_hold_up_others(
        client, conn, fast, hooks_auth, receiver, dispatch):
    quick_done = threading.Event()
    held = []

    def slow_behaviour(n, headers):
        if n == 0:  # sit on the first request until the other receiver has everything
            t0 = time.monotonic()
            quick_done.wait(8)
            held.append(time.monotonic() - t0)
        return 200, 0

    slow = receiver(slow_behaviour)
    quick = receiver(lambda n, h: (quick_done.set() if n == 19 else None, (200, 0))[1])
    slow_hook = subscribe(client, hooks_auth, slow.url)
    subscribe(client, hooks_auth, quick.url)
    emit(conn, 20)
    dispatch(dataclasses.replace(fast, webhook_timeout_seconds=10.0))
    wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_deliveries"
                       " WHERE status = 'delivered'")[0][0] == 40, timeout=30,
             what="both receivers")
    assert held and held[0] < 8  # released by the other receiver finishing, not by the limit
    assert len(quick.received) == 20
    assert q(conn, "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d"
                   " ON d.id = a.delivery_id WHERE d.webhook_id = %s",
             int(slow_hook["id"]))[0][0] == 20  # no retries: nothing timed out


def test_a_receiver_that_times_out_is_retried(
        client, conn, fast, hooks_auth, receiver, dispatch):
    slow = receiver(lambda n, h: (200, 3.0) if n == 0 else (200, 0))
    slow_hook = subscribe(client, hooks_auth, slow.url)
    emit(conn, 5)
    dispatch(fast)
    wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_deliveries"
                       " WHERE status = 'delivered'")[0][0] == 5, what="delivery after timeout")
    log = client.get(f"/v1/webhooks/{slow_hook['id']}/deliveries?limit=500",
                     headers=hooks_auth).get_json()["deliveries"]
    timed_out = [d["attempt_log"] for d in log if d["attempts"] > 1]
    assert len(timed_out) == 1  # the request the receiver sat on; retried after the timeout
    first = timed_out[0]
    assert first[0]["error"] == "timed out after 1 s" and first[0]["status_code"] is None
    assert 900 < first[0]["duration_ms"] < 2500 and first[-1]["status_code"] == 200


def test_failing_for_the_retry_window_disables_then_enable_delivers(
        client, conn, fast, hooks_auth, receiver, dispatch):
    healthy = threading.Event()
    rec = receiver(lambda n, h: (200, 0) if healthy.is_set() else (503, 0))
    hook = subscribe(client, hooks_auth, rec.url)
    emit(conn, 3)
    dispatch(dataclasses.replace(fast, webhook_retry_window_seconds=1.0))
    wait_for(lambda: client.get(f"/v1/webhooks/{hook['id']}", headers=hooks_auth)
             .get_json()["status"] == "disabled", what="disabled")
    state = client.get(f"/v1/webhooks/{hook['id']}", headers=hooks_auth).get_json()
    assert "HTTP 503" in state["disabled_reason"] and "failed for" in state["disabled_reason"]
    assert state["deliveries"] == {"pending": 3, "delivered": 0, "failed": 0}  # kept
    # Nothing is tried while disabled; events keep their place.
    emit(conn, 2)
    tried = len(rec.received)
    time.sleep(0.5)
    assert len(rec.received) == tried
    healthy.set()
    r = client.post(f"/v1/webhooks/{hook['id']}/enable", headers=hooks_auth)
    assert r.status_code == 200 and r.get_json()["status"] == "active"
    wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_deliveries"
                       " WHERE status = 'delivered'")[0][0] == 5, what="the queue after enable")
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                     headers=hooks_auth).get_json()["deliveries"]
    assert sum(a["status_code"] == 503 for d in log for a in d["attempt_log"]) >= 2


def test_gone_disables_at_once(client, conn, fast, hooks_auth, receiver, dispatch):
    rec = receiver(lambda n, h: (410, 0))
    hook = subscribe(client, hooks_auth, rec.url)
    emit(conn, 3)
    dispatch(fast)
    wait_for(lambda: client.get(f"/v1/webhooks/{hook['id']}", headers=hooks_auth)
             .get_json()["status"] == "disabled", what="disabled")
    tried = len(rec.received)
    assert 1 <= tried <= fast.webhook_concurrency  # only those already in flight
    time.sleep(0.5)
    assert len(rec.received) == tried
    assert "410" in client.get(f"/v1/webhooks/{hook['id']}",
                               headers=hooks_auth).get_json()["disabled_reason"]


def test_the_ssrf_guard_is_applied_again_at_delivery(
        client, conn, fast, hooks_auth, receiver, dispatch):
    rec = receiver()
    hook = subscribe(client, hooks_auth, rec.url)  # allowed when it was made
    emit(conn, 1)
    dispatch(dataclasses.replace(fast, webhook_allow_hosts=frozenset()))
    wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_attempts")[0][0] >= 1,
             what="an attempt")
    assert rec.received == []
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                     headers=hooks_auth).get_json()["deliveries"][0]["attempt_log"]
    assert "https" in log[0]["error"]


def test_a_worker_killed_mid_delivery_redelivers(client, conn, dsn, hooks_auth, receiver):
    release = threading.Event()
    arrived = threading.Event()

    def behaviour(n, headers):
        if n == 0:
            arrived.set()
            release.wait(30)
        return 200, 0

    rec = receiver(behaviour)
    subscribe(client, hooks_auth, rec.url)
    emit(conn, 3)
    env = {**os.environ, "DATABASE_URL": dsn, "CRM_SECRET_KEY": TEST_SECRET_KEY,
           "CRM_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "CRM_WEBHOOK_TIMEOUT_SECONDS": "1",
           "CRM_WEBHOOK_CONCURRENCY": "1", "CRM_SCORE_SCHEDULE": "off"}
    worker = subprocess.Popen([sys.executable, "-m", "crm_service", "worker",
                               "--poll-seconds", "0.2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert arrived.wait(30), "the worker never delivered"
        os.kill(worker.pid, signal.SIGKILL)  # mid-delivery: the receiver has not answered
        worker.wait(10)
        release.set()
        assert q(conn, "SELECT count(*) FROM webhook_deliveries"
                 " WHERE status = 'delivered'")[0][0] == 0
        worker = subprocess.Popen([sys.executable, "-m", "crm_service", "worker",
                                   "--poll-seconds", "0.2"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: q(conn, "SELECT count(*) FROM webhook_deliveries"
                           " WHERE status = 'delivered'")[0][0] == 3, timeout=40,
                 what="redelivery after the lease")
    finally:
        worker.kill()
        worker.wait(10)
    ids = [h["webhook-id"] for h, _ in rec.received]
    assert len(ids) == 4 and len(set(ids)) == 3  # one event twice, with the same delivery id
    assert ids.count(ids[0]) == 2


def test_subscription_cap(client, hooks_auth, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "MAX_SUBSCRIPTIONS", 2)
    body = {"url": receiver().url, "events": ["tier.changed"]}
    assert [client.post("/v1/webhooks", json=body, headers=hooks_auth).status_code
            for _ in range(3)] == [201, 201, 422]
