"""The real server: `crm-service serve` under gunicorn, spoken to over HTTP on loopback."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from crm_service import api_keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(dsn, conn, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(tmp_path), CRM_WORKERS="2")
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(proc.stdout.read())
            time.sleep(0.2)
    yield base, proc
    proc.terminate()
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


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
    # Access log shows paths only, never bearer tokens or query strings.
    assert '"POST /v1/orders" 200' in out
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
