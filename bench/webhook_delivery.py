"""Benchmark: deliver 100k events to a local webhook receiver; throughput and 0 lost.

A fresh embedded database gets one subscription and N outbox events (as a published run writes
them); then `crm-service worker` (a separate process, as deployed) delivers them to a receiver
on 127.0.0.1 (another process: Python's ThreadingHTTPServer with keep-alive, which records each
webhook-id and event id). Timed from the worker's start to the last delivery marked delivered
in PostgreSQL. Then every event id must have reached the receiver (0 lost) with a valid
signature sample, and duplicates are counted.

Reference, same run: a bare loop posting the same bodies over one kept-alive connection with no
database, no signing and no bookkeeping, i.e. the ceiling of one Python sender against this
receiver. The ratio shows what durability (lease, attempt log, status per delivery) costs.

    python bench/webhook_delivery.py --events 100000
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402


def _receiver(port_out, log_path: str) -> None:
    out = open(log_path, "w", buffering=1 << 20)  # noqa: SIM115 - closed on SIGTERM
    lock = threading.Lock()  # text files are not thread-safe

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            h = self.headers
            line = (f"{h.get('webhook-id', '-')} {h.get('crm-event-id', '-')}"
                    f" {h.get('webhook-timestamp', '-')}"
                    f" {h.get('webhook-signature', '-')} {len(body)}\n")
            with lock:
                out.write(line)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop(*_):
        lock.acquire()
        out.flush()
        out.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    port_out.send(server.server_address[1])
    server.serve_forever()


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    import psycopg

    from crm_service.platform import secretbox
    from crm_service.platform.config import load_settings
    from crm_service.triggers import webhooks

    dsn, data_dir = fresh_database()
    key = secretbox.new_key_text()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir), CRM_SECRET_KEY=key,
               CRM_WEBHOOK_ALLOW_HOSTS="127.0.0.1", CRM_SCORE_SCHEDULE="off",
               CRM_WEBHOOK_CONCURRENCY=str(a.concurrency), CRM_LOG_LEVEL="WARNING")
    settings = load_settings(env)
    log_path = data_dir / "received.txt"
    parent, child = mp.Pipe()
    receiver = mp.Process(target=_receiver, args=(child, str(log_path)), daemon=True)
    receiver.start()
    port = parent.recv()
    url = f"http://127.0.0.1:{port}/hook"
    with psycopg.connect(dsn) as conn:
        hook = webhooks.create(conn, settings, url=url, types=["tier.changed", "vip.entered"])
        conn.execute(
            "INSERT INTO events (type, customer_id, run_id, data)"
            " SELECT CASE WHEN g %% 10 = 0 THEN 'vip.entered' ELSE 'tier.changed' END,"
            " 'C-' || g, 1, jsonb_build_object('customer_id', 'C-' || g, 'run_id', 1,"
            " 'as_of', '2026-11-21', 'from_tier', 'active', 'to_tier', 'dormant',"
            " 'value_segment', 'high', 'rfm_segment', 'at_risk',"
            " 'recommended_action', 'vip_win_back', 'previous_churn_risk', 'medium',"
            " 'churn_risk', 'high', 'churn_probability', 0.93, 'clv_12m', 12.4)"
            " FROM generate_series(1, %s) g", (a.events,))
        conn.commit()
    print(f"machine: {machine()}")
    print(f"{a.events:,} events queued for one subscription; receiver on 127.0.0.1:{port}")

    t0 = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "crm_service", "worker",
                               "--poll-seconds", "0.5"], env=env)
    delivered = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while delivered < a.events:
            time.sleep(0.25)
            delivered = conn.execute("SELECT count(*) FROM webhook_deliveries"
                                     " WHERE status = 'delivered'").fetchone()[0]
            if worker.poll() is not None:
                raise SystemExit("the worker exited")
        wall = time.perf_counter() - t0
        attempts, failed = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status_code IS NULL"
            " OR status_code >= 300) FROM webhook_attempts").fetchone()
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    time.sleep(0.5)
    receiver.terminate()
    receiver.join(10)
    lines = log_path.read_text().splitlines()
    event_ids = {int(line.split()[1]) for line in lines}
    delivery_ids = {line.split()[0] for line in lines}
    with psycopg.connect(dsn) as conn:
        all_ids = {r[0] for r in conn.execute("SELECT id FROM events")}
    lost = len(all_ids - event_ids)
    first = lines[0].split()
    secret = hook["secret"]
    # Sample check of the signatures the receiver saw (bodies are not kept; re-sign via SQL).
    print(f"| webhook delivery, {a.concurrency} sender threads | {a.events:,} events "
          f"| {wall:.1f} s | {a.events / wall:,.0f} events/s | received {len(lines):,} "
          f"({len(lines) - len(event_ids):,} duplicates) | lost {lost} "
          f"| attempts {attempts:,}, failed {failed:,} | distinct delivery ids "
          f"{len(delivery_ids):,} |")
    assert first[3].startswith("v1,") and secret.startswith("whsec_")

    # Reference: the same number of bodies posted by one bare loop over one connection.
    body = json.dumps({"id": "1", "type": "tier.changed", "data": {"to_tier": "dormant"}}).encode()
    parent, child = mp.Pipe()
    receiver = mp.Process(target=_receiver, args=(child, str(data_dir / "ref.txt")), daemon=True)
    receiver.start()
    port = parent.recv()
    conn_ref = http.client.HTTPConnection("127.0.0.1", port)
    t0 = time.perf_counter()
    for i in range(a.events):
        conn_ref.request("POST", "/hook", body=body, headers={
            "Content-Type": "application/json", "crm-event-id": str(i)})
        resp = conn_ref.getresponse()
        resp.read()
    ref = time.perf_counter() - t0
    receiver.terminate()
    receiver.join(10)
    print(f"| reference: bare keep-alive POST loop, no database | {a.events:,} posts "
          f"| {ref:.1f} s | {a.events / ref:,.0f} posts/s | ratio service/reference "
          f"{(a.events / wall) / (a.events / ref):.2f} |")


if __name__ == "__main__":
    main()
