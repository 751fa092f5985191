"""Benchmark: REST ingestion throughput, POST /v1/orders with 1000-order batches.

Starts ``crm-service serve`` (gunicorn, 2 workers) on a fresh embedded PostgreSQL and sends
batches from concurrent clients over loopback. Reference in the same run: the endpoint a quick
hand-rolled service would have — one ``INSERT .. ON CONFLICT`` per order via psycopg
``executemany`` — driven directly, without HTTP, on the same database.

    python bench/rest_ingest.py --batches 200 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench.common import fresh_database, machine  # noqa: E402
from crm_service.access import api_keys  # noqa: E402


def batch(b: int, size: int) -> bytes:
    orders = [{"order_id": f"B{b}-{i}", "customer_id": f"C{(b * size + i) % 200_000}",
               "channel": ("tmall", "jd", "pinduoduo", "web")[i % 4],
               "ordered_at": f"2024-0{1 + i % 9}-1{i % 10}T10:{i % 60:02d}:00+08:00",
               "amount": f"{(i * 7) % 500 + 0.99:.2f}"} for i in range(size)]
    return json.dumps({"orders": orders}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_http(dsn: str, data_dir: Path, batches: int, clients: int, size: int) -> float:
    with psycopg.connect(dsn) as conn:
        _, token = api_keys.create_key(conn, "bench", ["orders:write"])
    port = free_port()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir), CRM_LOG_LEVEL="WARNING")
    server = subprocess.Popen([sys.executable, "-m", "crm_service", "serve", "--port", str(port),
                               "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    bodies = [batch(b, size) for b in range(batches)]
    errors: list[str] = []
    todo = iter(range(batches))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                b = next(todo, None)
            if b is None:
                return
            req = urllib.request.Request(url + "/v1/orders", data=bodies[b], method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                out = json.loads(resp.read())
                if out["totals"]["inserted"] != size:
                    errors.append(str(out["totals"]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.terminate()
    server.wait(timeout=30)
    assert not errors, errors[:3]
    return wall


def run_reference(dsn: str, batches: int, size: int) -> float:
    sql = ("INSERT INTO orders (channel, order_id, customer_id, ordered_at, amount, currency,"
           " status) VALUES (%s, %s, %s, %s, %s, 'USD', 'paid') ON CONFLICT (channel, order_id)"
           " DO UPDATE SET amount = EXCLUDED.amount")
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for b in range(batches):
            orders = json.loads(batch(b, size))["orders"]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, [("R" + o["channel"], o["order_id"], o["customer_id"],
                                       o["ordered_at"], o["amount"]) for o in orders])
        return time.perf_counter() - t0


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description="REST ingestion benchmark")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--size", type=int, default=1000)
    a = p.parse_args()
    dsn, data_dir = fresh_database()
    wall = run_http(dsn, data_dir, a.batches, a.clients, a.size)
    ref = run_reference(dsn, a.batches, a.size)
    n = a.batches * a.size
    print(f"machine: {machine()}")
    print("| what | orders | wall s | orders/s |")
    print("|---|---|---|---|")
    print(f"| POST /v1/orders, {a.size}/batch, {a.clients} clients, 2 gunicorn workers "
          f"| {n} | {wall:.1f} | {n / wall:,.0f} |")
    print(f"| reference: executemany INSERT .. ON CONFLICT, no HTTP, 1 connection "
          f"| {n} | {ref:.1f} | {n / ref:,.0f} |")
    print(f"ratio crm-service / reference throughput: {ref / wall:.2f}")


if __name__ == "__main__":
    main()
