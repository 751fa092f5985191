"""Benchmark: server time of the agent console's pages with about a million scored customers.

Serves the app the way production does (`crm-service serve`, 2 gunicorn workers) against the
1M synthetic base, signs in like a browser (form, CSRF token, session cookie) and requests each
page many times from one client, reading the server's own ``Server-Timing`` header (time spent
in the app, which is what the goal bounds) and the wall time seen by the client. The same
customers are also fetched from the JSON API (`GET /v1/customers/{id}`), the reference for the
customer page: the ratio is what rendering the page adds.

    python bench/console_pages.py --keep /tmp/benchdb

On first use the base gets made-up emails and phones (an SQL update, about a minute), and a
run whose record predates the CLV deciles is re-scored. Prints p50, p95, p99 and max per page.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_lookup import _free_port, _wait_ready  # noqa: E402
from bench.common import fresh_database, machine  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """Cookies, redirects not followed (each page is timed on its own), Server-Timing read."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def request(self, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, float, float]:
        """(status, body, server ms, client ms)."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        started = time.perf_counter()
        try:
            with self.opener.open(req, timeout=30) as r:
                status, body, timing = r.status, r.read().decode(), r.headers.get("Server-Timing")
        except urllib.error.HTTPError as e:
            status, body, timing = e.code, e.read().decode(), e.headers.get("Server-Timing")
        client = (time.perf_counter() - started) * 1000
        server = float(timing.split("dur=")[1]) if timing else float("nan")
        return status, body, server, client


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def _stats(values: list[float]) -> str:
    v = sorted(x for x in values if x == x)  # NaN: no Server-Timing (the JSON API)
    if not v:
        return "n/a"

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    return (f"p50 {pct(0.5):.1f} ms, p95 {pct(0.95):.1f} ms, p99 {pct(0.99):.1f} ms, "
            f"max {v[-1]:.1f} ms")


def _prepare(dsn: str, env: dict[str, str], as_of: str) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT count(*) FROM customers WHERE email IS NULL").fetchone()[0]:
            print("giving every customer a made-up email and phone (once)...", flush=True)
            conn.execute(
                "UPDATE customers SET email = customer_id || '@example.com',"
                " email_normalized = lower(customer_id) || '@example.com',"
                " phone = '+86 139 ' || lpad((abs(hashtext(customer_id)) % 100000000)::text,"
                " 8, '0'), phone_normalized = '+86139' || lpad((abs(hashtext(customer_id))"
                " % 100000000)::text, 8, '0') WHERE email IS NULL")
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE customers")
            conn.autocommit = False
        counts = conn.execute("SELECT r.counts ? 'clv_deciles' FROM scoring_state st"
                              " JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
    if not counts or not counts[0]:
        print("re-scoring (the live run predates the CLV deciles)...", flush=True)
        subprocess.run([sys.executable, "-m", "crm_service", "score", "--as-of", as_of],
                       env=env, check=True, capture_output=True)


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="reuse the database in this directory (see api_lookup.py)")
    ap.add_argument("--as-of", default="2024-12-31")
    ap.add_argument("--n", type=int, default=300, help="requests per page kind")
    a = ap.parse_args()
    dsn, data_dir = fresh_database(a.keep)
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir),
               CRM_RATE_LIMIT_PER_SECOND="1000000", CRM_RATE_LIMIT_BURST="1000000")
    _prepare(dsn, env, a.as_of)
    import psycopg

    from crm_service.access import api_keys

    with psycopg.connect(dsn) as conn:
        _, token = api_keys.create_key(conn, "bench-console", ["customers:read", "scores:read"])
        customers = conn.execute("SELECT count(*) FROM customer_scores s JOIN scoring_state st"
                                 " ON s.run_id = st.active_run_id").fetchone()[0]
        rows = conn.execute(
            # Uniform over the whole live run (a TABLESAMPLE SYSTEM page sample is not).
            "SELECT c.customer_id, c.email, c.phone FROM customer_scores s"
            " JOIN scoring_state st ON s.run_id = st.active_run_id"
            " JOIN customers c USING (customer_id) ORDER BY random() LIMIT 5000").fetchall()
        conn.commit()
    random.seed(7)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "crm_service", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    print(f"machine: {machine()}")
    print(f"live run: {customers} customers; {a.n} requests per page, one client, random "
          "customers; server time from the Server-Timing header")
    try:
        _wait_ready(port)
        b = Browser(f"http://127.0.0.1:{port}")
        _, form, _, _ = b.request("/console/sign-in")
        status, _, _, _ = b.request("/console/sign-in", {
            "csrf_token": CSRF.search(form).group(1), "api_key": token})
        assert status == 303, status
        _, home, _, _ = b.request("/console/")
        csrf = CSRF.search(home).group(1)
        auth = {"Authorization": f"Bearer {token}"}
        # Diagnostics plots: rendered when the run is published (or on a first request, for a
        # run published before plots were stored), then read from the database.
        _, dash, _, _ = b.request("/console/dashboard")
        plots = re.findall(r'<img src="(/console/runs/\d+/plots/\w+\.svg\?lang=en)"', dash)
        first_answers = [b.request(p) for p in plots]
        stored_answers = [b.request(p) for p in plots for _ in range(30)]
        bad = sum(a[0] != 200 for a in first_answers + stored_answers)
        first = [a[2] for a in first_answers]
        stored = [a[2] for a in stored_answers]
        print(f"plots ({len(plots)}): first request {', '.join(f'{x:.0f}' for x in first)} ms;"
              f" stored: server {_stats(stored)}; errors {bad}", flush=True)
        kinds = {
            "lookup page (GET /console/)": lambda c: ("/console/", None, None),
            "dashboard (GET /console/dashboard)": lambda c: ("/console/dashboard", None, None),
            "customer page (GET /console/customers/{id})":
                lambda c: (f"/console/customers/{c[0]}", None, None),
            "reference: JSON profile (GET /v1/customers/{id})":
                lambda c: (f"/v1/customers/{c[0]}", None, auth),
            "search by id (POST /console/search)":
                lambda c: ("/console/search", {"csrf_token": csrf, "q": c[0]}, None),
            "search by email": lambda c: ("/console/search", {"csrf_token": csrf, "q": c[1]},
                                          None),
            "search by phone": lambda c: ("/console/search", {"csrf_token": csrf, "q": c[2]},
                                          None),
        }
        for name, make in kinds.items():
            for c in random.sample(rows, 20):  # warm-up: both workers, caches, connections
                b.request(*make(c))
            server_ms, client_ms, bad = [], [], 0
            for _ in range(a.n):
                status, _, s_ms, c_ms = b.request(*make(random.choice(rows)))
                bad += status not in (200, 303)
                server_ms.append(s_ms)
                client_ms.append(c_ms)
            print(f"{name}: server {_stats(server_ms)}; client {_stats(client_ms)}; "
                  f"errors {bad}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
