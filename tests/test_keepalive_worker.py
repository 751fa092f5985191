"""`crm-service serve`'s gunicorn worker (api.serving.server.ProblemKeepAliveWorker) over real HTTP.

Keep-alive, pipelined requests, many concurrent connections whose /tier lookups are batched,
slow clients that must not stall the event loop, requests handed to threads (a POST) on the
same connection as inline ones, and a prompt stop with idle connections open.
"""

import http.client
import json
import random
import socket
import threading
import time
from datetime import date
from urllib.parse import urlsplit

import psycopg
import pytest

from crm_service.scoring import run_scoring
from tests.test_serve import serving, stop


@pytest.fixture()
def served(cdnow_loaded, settings, dsn, tmp_path, make_token):
    run = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    customers = [r[0] for r in cdnow_loaded.execute(
        "SELECT customer_id FROM customer_scores WHERE run_id = %s ORDER BY customer_id",
        (run.run_id,)).fetchall()]
    cdnow_loaded.commit()
    token = make_token("admin")
    # One worker: a stalled event loop cannot hide behind another. Request logs off: nobody
    # reads the server's output pipe until it stops, and a thousand request lines would fill
    # it. The rate limit is raised for the load below.
    with serving(dsn, tmp_path, CRM_WORKERS="1", CRM_LOG_LEVEL="WARNING",
                 CRM_RATE_LIMIT_PER_SECOND="100000",
                 CRM_RATE_LIMIT_BURST="100000") as (base, proc):
        parts = urlsplit(base)
        yield parts.hostname, parts.port, token, customers, proc


def head(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[int, dict, dict]:
    conn.request("GET", path, headers=head(token))
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), json.loads(r.read())


def read_responses(sock: socket.socket, n: int, timeout: float = 10) -> list[tuple[int, bytes]]:
    """``n`` HTTP/1.1 responses with Content-Length bodies, read off one socket in order."""
    sock.settimeout(timeout)
    data, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        length = next(int(x.split(":", 1)[1]) for x in lines
                      if x.lower().startswith("content-length:"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        out.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return out


def test_keep_alive_pipelining_and_threads_on_one_connection(served, client):
    host, port, token, customers, _ = served
    conn = http.client.HTTPConnection(host, port, timeout=10)
    status, headers, body = get(conn, f"/v1/customers/{customers[0]}/tier", token)
    sock = conn.sock
    assert status == 200 and headers.get("Connection", "").lower() != "close"
    for cid in customers[1:4]:
        status, _, body = get(conn, f"/v1/customers/{cid}/tier", token)
        assert status == 200 and body["customer_id"] == cid
    assert conn.sock is sock  # the same connection throughout
    # A POST (answered in a thread) then lookups (answered on the loop), same connection.
    conn.request("POST", "/v1/orders", headers={**head(token), "Content-Type":
                                                "application/json"},
                 body=json.dumps({"orders": [{"order_id": "ka-1", "customer_id": customers[0],
                                              "channel": "web", "ordered_at": "1998-07-03",
                                              "amount": 12.5}]}))
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["totals"]["inserted"] == 1
    status, _, body = get(conn, f"/v1/customers/{customers[0]}/tier", token)
    assert status == 200 and body["provisional"] is True
    status, _, body = get(conn, f"/v1/customers/{customers[0]}", token)
    assert status == 200 and body["provisional"] is True
    assert conn.sock is sock
    conn.close()
    # Pipelined: three requests in one write, three answers in order on the same socket.
    with socket.create_connection((host, port)) as raw:
        ask = "".join(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
                      for path in (f"/v1/customers/{customers[5]}/tier", "/healthz",
                                   f"/v1/customers/{customers[6]}/tier"))
        raw.sendall(ask.encode())
        (s1, b1), (s2, b2), (s3, b3) = read_responses(raw, 3)
    assert (s1, s2, s3) == (200, 200, 200)
    assert json.loads(b1)["customer_id"] == customers[5]
    assert json.loads(b2)["status"] == "ok"
    assert json.loads(b3)["customer_id"] == customers[6]
    assert json.loads(b1) == client.get(f"/v1/customers/{customers[5]}/tier",
                                        headers=head(token)).json


def test_concurrent_lookups_are_batched_and_each_gets_its_own_answer(served, client):
    """48 keep-alive connections at once: lookups arrive together, so the worker batches them;
    every answer must still be the customer's own."""
    host, port, token, customers, _ = served
    sample = random.Random(7).sample(customers, 300)
    expected = {c: client.get(f"/v1/customers/{c}/tier", headers=head(token)).json
                for c in sample}
    wrong: list[str] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, port, timeout=20)
        try:
            for _ in range(25):
                cid = rng.choice(sample)
                status, _, body = get(conn, f"/v1/customers/{cid}/tier", token)
                if status != 200 or body != expected[cid]:
                    wrong.append(f"{cid}: {status} {body}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not wrong


def probe(host: str, port: int, token: str, customers: list[str], n: int = 10) -> float:
    """Seconds for ``n`` lookups and a /healthz on a new connection (each must succeed)."""
    began = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    for cid in customers[1:1 + n]:
        assert get(conn, f"/v1/customers/{cid}/tier", token)[0] == 200
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    conn.close()
    return time.monotonic() - began


def test_slow_clients_do_not_stall_the_others(served):
    """Clients that stop mid-head, pipeline half a request, or never read their answers: the
    event loop (and /healthz, answered in a thread) keep serving everyone else."""
    host, port, token, customers, _ = served
    ask = f"GET /v1/customers/{customers[0]}/tier HTTP/1.1\r\nHost: x\r\n"
    with socket.create_connection((host, port)) as half, \
            socket.create_connection((host, port)) as pipelined, \
            socket.socket() as deaf:
        half.sendall(ask.encode())  # half a head, then silence
        full = ask + f"Authorization: Bearer {token}\r\n\r\n"
        pipelined.sendall((full + "GET /v1/cust").encode())  # an answer, then half a head
        slow_heads = []
        for _ in range(6):  # more stalled heads than the worker has threads
            s = socket.create_connection((host, port))
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            slow_heads.append(s)
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.connect((host, port))
        deaf.setblocking(False)
        many = (f"GET /v1/customers/{customers[1]} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\n\r\n" * 50).encode()
        until = time.monotonic() + 2
        while time.monotonic() < until:  # pipelined profile requests, never reading answers
            try:
                deaf.send(many)
            except BlockingIOError:
                time.sleep(0.05)
        assert probe(host, port, token, customers) < 2
        ((status, body),) = read_responses(pipelined, 1)
        assert status == 200 and json.loads(body)["customer_id"] == customers[0]
        half.sendall(f"Authorization: Bearer {token}\r\n\r\n".encode())
        ((status, body),) = read_responses(half, 1)
        assert status == 200 and json.loads(body)["customer_id"] == customers[0]
        for s in slow_heads:
            s.close()


def test_a_locked_table_does_not_stall_the_loop(served, dsn):
    """A lookup waiting on a lock (say a migration's) waits in a thread; the lane's batch gives
    up fast, so other connections are still answered."""
    host, port, token, customers, _ = served
    assert probe(host, port, token, customers) < 2
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        waited: dict[str, tuple[int, float]] = {}

        def blocked() -> None:
            began = time.monotonic()
            conn = http.client.HTTPConnection(host, port, timeout=20)
            status = get(conn, f"/v1/customers/{customers[30]}/tier", token)[0]
            waited["lookup"] = (status, time.monotonic() - began)
            conn.close()

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.5)
        began = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert time.monotonic() - began < 1
        conn.close()
        time.sleep(0.5)
        locker.rollback()  # the lock goes; the waiting lookup is answered
    t.join(20)
    assert waited["lookup"][0] == 200 and waited["lookup"][1] >= 0.9
    assert probe(host, port, token, customers) < 2


def test_stops_promptly_with_idle_connections_open(served):
    host, port, token, customers, proc = served
    idle = [http.client.HTTPConnection(host, port, timeout=5) for _ in range(5)]
    for conn in idle:
        assert get(conn, f"/v1/customers/{customers[0]}/tier", token)[0] == 200
    began = time.monotonic()
    stop(proc)
    assert proc.returncode is not None and time.monotonic() - began < 8
    for conn in idle:
        conn.close()


def test_watchdog_cuts_a_batch_that_waits_too_long():
    """A database that stops answering (frozen host, lost network) would block the lane's read
    forever; the watchdog shuts the socket down, and the read returns."""
    from api.serving.fastpath import _Watchdog

    ours, theirs = socket.socketpair()
    with ours, theirs:
        watchdog = _Watchdog(0.2)
        watchdog.arm(ours.fileno())
        began = time.monotonic()
        assert ours.recv(10) == b""  # nothing ever comes: the watchdog ends the wait
        waited = time.monotonic() - began
        assert watchdog.disarm() is True  # cut: the caller closes the connection
        assert 0.15 < waited < 2
        # Disarmed in time, a socket is left alone.
        a, b = socket.socketpair()
        with a, b:
            watchdog.arm(a.fileno())
            assert watchdog.disarm() is False
            time.sleep(0.5)
            b.sendall(b"ok")
            assert a.recv(10) == b"ok"


def test_rate_limited_lookups_get_429_once_over_keep_alive(cdnow_loaded, settings, dsn, tmp_path,
                                                          make_token):
    """A lookup the lane declines on the loop (over the key's limit) is answered by Flask in a
    thread: one 429 problem per request, nothing lost on the pipelined connection."""
    run = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    cid = cdnow_loaded.execute("SELECT customer_id FROM customer_scores WHERE run_id = %s"
                               " LIMIT 1", (run.run_id,)).fetchone()[0]
    cdnow_loaded.commit()
    token = make_token("scores:read")
    with serving(dsn, tmp_path, CRM_WORKERS="1", CRM_RATE_LIMIT_PER_SECOND="0.001",
                 CRM_RATE_LIMIT_BURST="4") as (base, _):
        parts = urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port)) as raw:
            ask = (f"GET /v1/customers/{cid}/tier HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n").encode()
            raw.sendall(ask)  # the first verifies the key (in a thread)
            assert read_responses(raw, 1)[0][0] == 200
            raw.sendall(ask * 6)  # pipelined: batched on the loop
            answers = read_responses(raw, 6)
    assert [status for status, _ in answers] == [200, 200, 200, 429, 429, 429]
    assert json.loads(answers[0][1])["customer_id"] == cid
    problem = json.loads(answers[3][1])
    assert problem["status"] == 429 and problem["type"].endswith("/rate-limited")
