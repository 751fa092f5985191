"""The real server: `crm-service serve` under gunicorn, spoken to over HTTP on loopback."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from crm_service.access import api_keys
from tests.conftest import TEST_SECRET_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(base: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(proc.stdout.read())
            time.sleep(0.2)
    pytest.fail(f"{base} did not come up in {seconds} s")


@contextlib.contextmanager
def serving(dsn: str, data_dir, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`crm-service serve` (2 gunicorn workers unless ``env`` says) on a free port; stopped on
    exit."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "CRM_DATA_DIR": str(data_dir), "CRM_WORKERS": "2",
           "CRM_SECRET_KEY": TEST_SECRET_KEY, **env}
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, proc)
        yield base, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, seconds: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``seconds``; output is drained."""
    proc.terminate()
    try:
        proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.fixture()
def server(dsn, conn, tmp_path):
    with serving(dsn, tmp_path) as running:
        yield running


def call(url, body=None, token=None, method="GET"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get_content_type(), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), json.loads(err.read())


def test_serve_over_real_http(server, conn):
    base, proc = server
    _, token = api_keys.create_key(conn, "e2e", ["orders:write"])
    conn.commit()
    assert call(base + "/readyz")[0] == 200
    status, _, body = call(base + "/v1/orders", {"orders": [{
        "order_id": "E1", "customer_id": "C1", "channel": "web",
        "ordered_at": "2024-01-01", "amount": 5}]}, token, "POST")
    assert status == 200 and body["totals"]["inserted"] == 1
    status, ctype, body = call(base + "/v1/orders", {"orders": []}, None, "POST")
    assert status == 401 and ctype == "application/problem+json"
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    proc.stdout = None  # read: nothing left for the fixture to drain
    # One JSON line per request: route template, status, latency, request id; never the key.
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    requests = [x for x in lines if x.get("msg") == "request"]
    assert any(x["route"] == "/v1/orders" and x["method"] == "POST" and x["status"] == 200
               and x["duration_ms"] >= 0 and len(x["request_id"]) == 32 for x in requests)
    assert token not in out


def test_chunked_body_over_the_limit_is_413(server, conn):
    import http.client

    base, _ = server
    _, token = api_keys.create_key(conn, "e2e", ["orders:write"])
    conn.commit()
    host, port = base.removeprefix("http://").split(":")

    def chunks():
        yield b'{"orders": [], "pad": "'
        for _ in range(6):
            yield b"x" * (1 << 20)
        yield b'"}'

    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("POST", "/v1/orders", body=chunks(), encode_chunked=True,
                  headers={"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"})
        resp = c.getresponse()
        assert resp.status == 413
        assert resp.getheader("Content-Type") == "application/problem+json"
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close the connection after refusing the body: also a refusal
    finally:
        c.close()
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_no_personal_data_or_key_in_any_log_line(server, conn):
    """Canaries: a customer's id, email, phone, name and identity, and the API key, are sent
    through every kind of request that carries them; none may appear in the server's output."""
    base, proc = server
    _, token = api_keys.create_key(conn, "log-canary", ["admin"])
    conn.commit()
    cid, email, phone, name, ext = ("logcanary-41d7", "log.canary@example.net",
                                    "+8613711122233", "Canary Logwatch", "jd_logcanary")
    body = {"customers": [{"customer_id": cid, "email": email, "phone": phone, "name": name,
                           "identities": [{"channel": "jd", "external_id": ext}]}]}
    assert call(base + "/v1/customers", body, token, "POST")[0] == 200
    order = {"order_id": "LC-1", "customer_id": cid, "channel": "jd",
             "ordered_at": "2024-01-01", "amount": 5}
    assert call(base + "/v1/orders", {"orders": [order]}, token, "POST")[0] == 200
    bad = {"customers": [{"customer_id": cid, "email": email + " not an email", "phone": "x"}]}
    call(base + "/v1/customers", bad, token, "POST")
    call(base + "/v1/customers", {"customers": "not a list", "email": email}, token, "POST")
    for query in (f"email={email}", f"phone={phone}", f"channel=jd&external_id={ext}"):
        assert call(f"{base}/v1/customers/search?{query}", token=token)[0] == 200
    for path in (f"/v1/customers/{cid}", f"/v1/customers/{cid}/tier",
                 f"/v1/customers/{cid}/export", f"/v1/customers/{cid}/scores"):
        call(base + path, token=token)
    call(base + "/v1/orders", {"orders": [order]}, token + "x", "POST")  # a bad key
    assert call(base + f"/v1/customers/{cid}", token=token, method="DELETE")[0] == 200
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    proc.stdout = None
    lines = out.splitlines()
    assert sum('"msg": "request"' in line for line in lines) >= 12
    for canary in (cid, email, phone, "13711122233", name, ext, token, token.split("_")[-1]):
        assert [line for line in lines if canary in line] == [], canary


def test_embedded_serve_hands_the_server_key_to_api_and_worker(tmp_path):
    """In embedded mode the API and the worker get DATABASE_URL from serve; they must still use
    the data directory's key file (webhooks, erasure), not refuse to run."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CRM_SECRET_KEY")}
    env.update(CRM_DATA_DIR=str(tmp_path / "data"), CRM_WORKERS="1",
               CRM_WEBHOOK_ALLOW_HOSTS="127.0.0.1", CRM_SCORE_SCHEDULE="off")
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, proc, 90)
        made = subprocess.run([sys.executable, "-m", "crm_service", "keys", "create", "--name",
                               "t", "--scopes", "admin", "--json"], env=env, check=True,
                              capture_output=True, text=True)
        token = json.loads(made.stdout)["key"]
        status, _, body = call(base + "/v1/webhooks", {"url": "http://127.0.0.1:9/x",
                                                       "events": ["vip.entered"]}, token, "POST")
        assert status == 201 and body["secret"].startswith("whsec_")
        assert call(base + "/v1/customers/nobody", token=token, method="DELETE")[0] == 404
        time.sleep(1.5)  # the worker's dispatcher threads have started by now
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "CRM_SECRET_KEY" not in out and "Traceback" not in out
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o077 == 0


def test_rate_limit_is_shared_by_gunicorn_workers(dsn, conn, tmp_path):
    """Two gunicorn workers, one budget: 40 quick requests with a burst of 10 at 1/s get about
    10 through, not 20."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(tmp_path), CRM_WORKERS="2",
               CRM_SECRET_KEY=TEST_SECRET_KEY, CRM_RATE_LIMIT_PER_SECOND="1",
               CRM_RATE_LIMIT_BURST="10", CRM_RATE_LIMIT_FILE=str(tmp_path / "buckets.bin"))
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, proc)
        _, token = api_keys.create_key(conn, "limited", ["scores:read"])
        conn.commit()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: call(base + "/v1/events", token=token)[0],
                                  range(40)))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert set(codes) == {200, 429}
    assert 10 <= codes.count(200) <= 13, codes
    assert sum('"status": 429' in line for line in out.splitlines()) == codes.count(429)


def test_http_parser_errors_are_problem_json(server):
    """gunicorn refuses an over-long URL or header before the app: still problem+json, no HTML."""
    import http.client

    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    for path, headers, status in [("/v1/customers?cursor=" + "x" * 9000, {}, 414),
                                  ("/healthz", {"X-Pad": "y" * 9000}, 431)]:
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            c.request("GET", path, headers=headers)
            resp = c.getresponse()
            body = json.loads(resp.read())
        finally:
            c.close()
        assert resp.status in {status, 400}, (path[:20], resp.status)
        assert resp.getheader("Content-Type") == "application/problem+json"
        assert body["status"] == resp.status and body["title"]


@pytest.mark.slow
def test_database_down_then_back_without_restarting_the_api(tmp_path):
    """With the database killed (-9), the API answers 503 + Retry-After quickly, and serves
    again within 5 s of the database's return, without a restart (its own PostgreSQL)."""
    from bench.fault_drills import Database, Server, request

    db = Database(tmp_path / "db")
    server = None
    try:
        with psycopg.connect(db.dsn) as c:
            _, token = api_keys.create_key(c, "drill", ["admin"])
        server = Server(db.dsn, tmp_path / "api")
        server.start()
        db.kill()
        for path in ["/readyz", "/v1/customers/C-1/tier", "/v1/segments"]:
            began = time.monotonic()
            status, headers, body = request(server.base, path, token, timeout=30)
            assert time.monotonic() - began < 5, path
            assert status == 503 and headers["Content-Type"] == "application/problem+json"
            assert headers["Retry-After"].isdigit()
        db.start()
        began = time.monotonic()
        while request(server.base, "/v1/customers/C-1/tier", token)[0] == 503:
            assert time.monotonic() - began < 5, "not serving 5 s after the database returned"
            time.sleep(0.05)
        # Every worker and pool now serves: no stale connection left to fail a later request.
        for _ in range(10):
            for path in ["/readyz", "/v1/customers/C-1/tier", "/v1/segments"]:
                assert request(server.base, path, token)[0] in (200, 404), path
    finally:
        if server is not None:
            server.stop()
        db.stop()


def test_metrics_count_every_gunicorn_worker(dsn, conn, tmp_path):
    """Under `serve` (two workers, a fresh PROMETHEUS_MULTIPROC_DIR) a scrape counts the
    requests whichever worker answered them; the folder goes when the server stops."""
    import glob
    import tempfile

    from prometheus_client.parser import text_string_to_metric_families

    _, token = api_keys.create_key(conn, "metrics", ["metrics:read", "scores:read"])
    conn.commit()
    auth = {"Authorization": f"Bearer {token}"}
    pattern = os.path.join(tempfile.gettempdir(), "crm-metrics-*")
    before = set(glob.glob(pattern))
    with serving(dsn, tmp_path, CRM_RATE_LIMIT_PER_SECOND="0") as (base, _proc):
        (folder,) = set(glob.glob(pattern)) - before
        sent = 0
        # New connections until both workers have answered some (each writes its own file).
        while sent < 400 and len(glob.glob(os.path.join(folder, "counter_*.db"))) < 2:
            try:
                urllib.request.urlopen(urllib.request.Request(base + "/v1/segments",
                                                              headers=auth), timeout=10)
            except urllib.error.HTTPError as err:
                assert err.code == 404  # no run published yet
            sent += 1
        assert len(glob.glob(os.path.join(folder, "counter_*.db"))) >= 2
        with urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers=auth),
                                    timeout=10) as resp:
            text = resp.read().decode()
    counted = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "crm_http_requests_total"
                  and s.labels.get("route") == "/v1/segments" and s.labels["status"] == "404")
    assert counted == sent
    assert not os.path.exists(folder)


def test_the_fallback_http_worker_serves_the_same_lookups(dsn, cdnow_loaded, settings,
                                                          tmp_path):
    """`serve --http-worker threads` (CRM_HTTP_WORKER): the exit plan of the gunicorn adapter,
    gunicorn's gthread worker with public API only, gives the same answers."""
    from datetime import date

    from crm_service.scoring import run_scoring

    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    _, token = api_keys.create_key(cdnow_loaded, "gthread", ["admin"])
    cdnow_loaded.commit()
    paths = [f"/v1/customers/cdnow-{n:04d}{tail}" for n in (1, 42, 777)
             for tail in ("/tier", "")] + ["/v1/customers/nobody/tier"]
    with serving(dsn, tmp_path) as (base, _):
        keepalive = {p: call(base + p, token=token) for p in paths}
    with serving(dsn, tmp_path, CRM_HTTP_WORKER="threads") as (base, _):
        threads = {p: call(base + p, token=token) for p in paths}
    assert threads == keepalive
    assert [keepalive[p][0] for p in paths] == [200] * 6 + [404]
