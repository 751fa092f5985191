"""Fault drills: kill -9 the API server, the database, a bulk import and a scoring run mid-flight.

    python bench/fault_drills.py --rounds 20            # every drill, 20 kills each
    python bench/fault_drills.py --drills api-rest,db-down --rounds 5

Each drill runs against a fresh embedded PostgreSQL that this script runs itself (so it can
kill -9 it) and a real ``crm-service serve`` (gunicorn, 2 workers) over loopback HTTP.

- ``api-rest`` / ``db-rest``: a client posts batches of orders, each with its own
  Idempotency-Key. A killer pauses it at random moments and kill -9s the API server's process
  group (or the postmaster), restarts it, and counts each batch's orders: every batch must be
  all there or absent (0 partial batches). The client then replays every batch whose answer it
  never got with the same key until it gets 200. At the end every acknowledged order must be
  stored with the values sent (0 lost).
- ``api-bulk`` / ``db-bulk``: ``crm-service import orders`` of a 100k-order file, killed (the
  import process, or the postmaster) at a random moment: the file must be all there or absent;
  rerunning the import completes it.
- ``db-down``: the postmaster is killed while the API serves lookups, orders and reads. Every
  answer while it is down must be 503 problem+json with Retry-After within the pool timeout
  (none 500, none hanging); after the database is back, the time until requests succeed again
  is measured (goal: within 5 s, without restarting the API).
- ``scoring-kill``: ``crm-service score`` is killed midway; the previous run must stay live and
  the next ``crm-service worker`` start must mark the killed run failed.

Results go to stdout as a table and to ``bench/out/fault_drills.json``; RELIABILITY.md records
them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from crm_service.access import api_keys  # noqa: E402
from crm_service.platform import schema  # noqa: E402
from crm_service.platform.embedded import start_embedded  # noqa: E402
from crm_service.platform.secretbox import new_key_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BATCH = 200  # orders per REST batch


# --- the database, run by this script so it can be killed --------------------------------------

class Database:
    """PostgreSQL started as a child process on the embedded cluster's socket."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver

        self.dsn = start_embedded(data_dir)
        schema.upgrade(self.dsn)
        self.pgdata = (data_dir / "pg").resolve()
        self.socket_dir = parse_qs(urlparse(self.dsn).query)["host"][0]
        pgserver.get_server(self.pgdata).cleanup()  # stop pgserver's copy; run our own
        self.bin = Path(pgserver.__file__).parent / "pginstall" / "bin" / "postgres"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> float:
        """Start and wait until it accepts connections; return the seconds that took."""
        began = time.monotonic()
        user = "pgserver" if os.geteuid() == 0 else None
        while True:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [str(self.bin), "-D", str(self.pgdata), "-h", "", "-k", self.socket_dir],
                user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(300):
                if self.proc.poll() is not None:
                    break  # old backends still hold shared memory: try again
                try:
                    psycopg.connect(self.dsn, connect_timeout=1).close()
                    return time.monotonic() - began
                except psycopg.OperationalError:
                    time.sleep(0.05)
            if self.proc.poll() is None:
                raise RuntimeError("postgres did not come up")
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(timeout=30)


# --- the API server ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``crm-service serve`` in its own process group (kill -9 takes master and workers)."""

    def __init__(self, dsn: str, data_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir),
                        CRM_WORKERS="2", CRM_RATE_LIMIT_PER_SECOND="0", CRM_LOG_LEVEL="WARNING",
                        CRM_IDEMPOTENCY_STALE_SECONDS="3")
        self.env.setdefault("CRM_SECRET_KEY", new_key_text())
        self.proc: subprocess.Popen | None = None
        OUT.mkdir(exist_ok=True)
        self.log = (OUT / "fault_drills_server.log").open("a")

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "crm_service", "serve", "--port", str(self.port)],
            env=self.env, start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/readyz", timeout=1).close()  # noqa: S310
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the API did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()


def request(base: str, path: str, token: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30
            ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(base + path, data=body,  # noqa: S310
                                 method="POST" if body is not None else "GET")
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# --- REST ingestion under kills ------------------------------------------------------------------

def batch_orders(b: int) -> list[dict]:
    rnd = random.Random(b)
    return [{"order_id": f"d{b}-{i}", "customer_id": f"dc-{rnd.randrange(5000)}",
             "channel": rnd.choice(["tmall", "jd", "web"]),
             "ordered_at": f"2025-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}",
             "amount": f"{rnd.randrange(100, 100000) / 100:.2f}"} for i in range(BATCH)]


def rest_drill(target: str, rounds: int, db: Database, server: Server, token: str) -> dict:
    """Kill ``target`` ("api" or "db") ``rounds`` times while a client ingests."""
    acked: dict[int, bytes] = {}  # batch -> first 200 answer
    unknown: set[int] = set()  # sent, answer lost
    paused, pause_ack = threading.Event(), threading.Event()
    done, draining, drained = threading.Event(), threading.Event(), threading.Event()
    counters = {"requests": 0, "answers_5xx": 0, "connection_errors": 0, "replays": 0}
    next_batch = [0]

    def client() -> None:
        while not done.is_set():
            if paused.is_set():
                pause_ack.set()
                time.sleep(0.01)
                continue
            if unknown:
                b = min(unknown)
                counters["replays"] += 1
            elif draining.is_set():  # no new batches once the kills are over
                drained.set()
                time.sleep(0.01)
                continue
            else:
                b = next_batch[0]
                next_batch[0] += 1
            body = json.dumps({"orders": batch_orders(b)}).encode()
            counters["requests"] += 1
            try:
                status, _, answer = request(server.base, "/v1/orders", token, body,
                                            {"Idempotency-Key": f"drill-{b}"}, timeout=10)
            except (OSError, http.client.HTTPException):
                counters["connection_errors"] += 1
                unknown.add(b)
                time.sleep(0.1)
                continue
            if status == 200:
                unknown.discard(b)
                acked.setdefault(b, answer)
            else:  # 503 while the database is down, 409 while a killed claim goes stale
                counters["answers_5xx"] += status >= 500
                unknown.add(b)
                time.sleep(0.2)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    partial_batches = 0
    restart_seconds = []
    for _ in range(rounds):
        time.sleep(random.uniform(0.3, 1.5))
        # Kill while a request is in flight; pause the client only after the kill.
        (server.kill if target == "api" else db.kill)()
        paused.set()
        pause_ack.clear()
        pause_ack.wait(30)
        began = time.monotonic()
        if target == "api":
            server.start()
        else:
            db.start()
        restart_seconds.append(time.monotonic() - began)
        with psycopg.connect(db.dsn) as conn:
            for _, n in conn.execute(
                    "SELECT split_part(order_id, '-', 1), count(*) FROM orders GROUP BY 1"):
                partial_batches += n not in (0, BATCH)
        paused.clear()
    # Resolve every unknown outcome by replaying its key.
    draining.set()
    drained.wait(120)
    done.set()
    worker.join(30)
    with psycopg.connect(db.dsn) as conn:
        stored = {(r[0], r[1]): (r[2], str(r[3])) for r in conn.execute(
            "SELECT channel, order_id, customer_id, amount FROM orders")}
    lost = wrong = 0
    for b in acked:
        for o in batch_orders(b):
            got = stored.get((o["channel"], o["order_id"]))
            lost += got is None
            wrong += got is not None and got != (o["customer_id"], o["amount"])
    sent_batches = next_batch[0]
    return {"drill": f"{target}-rest", "kills": rounds, "batches_acknowledged": len(acked),
            "orders_acknowledged": len(acked) * BATCH, "orders_lost": lost,
            "orders_wrong": wrong, "partial_batches": partial_batches,
            "unresolved_batches": len(unknown), "batches_sent": sent_batches,
            "orders_stored": len(stored), "extra_orders": len(stored) - len(acked) * BATCH,
            **counters, "restart_seconds_max": round(max(restart_seconds), 2)}


# --- bulk import under kills ---------------------------------------------------------------------

def write_file(path: Path, n: int) -> None:
    rnd = random.Random(7)
    with path.open("w") as f:
        f.write("order_id,customer_id,ordered_at,amount,channel\n")
        for i in range(n):
            f.write(f"b{i},bc-{rnd.randrange(20000)},2025-{rnd.randrange(1, 13):02d}-"
                    f"{rnd.randrange(1, 29):02d},{rnd.randrange(100, 100000) / 100:.2f},tmall\n")


def bulk_drill(target: str, rounds: int, db: Database, data_dir: Path, n: int) -> dict:
    path = data_dir / "bulk.csv"
    if not path.exists():
        write_file(path, n)
    env = dict(os.environ, DATABASE_URL=db.dsn, CRM_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "crm_service", "import", "orders", str(path)]
    # How long one import takes, to aim the kills inside it.
    with psycopg.connect(db.dsn) as conn:
        conn.execute("DELETE FROM orders WHERE order_id LIKE 'b%'")
    began = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # noqa: S603
    duration = time.monotonic() - began
    partial = 0
    outcomes = []
    for _ in range(rounds):
        with psycopg.connect(db.dsn) as conn:
            conn.execute("DELETE FROM orders WHERE order_id LIKE 'b%'")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,  # noqa: S603
                                stderr=subprocess.PIPE, text=True)
        time.sleep(random.uniform(0.1, 0.9) * duration)
        if target == "api":
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            db.kill()
            proc.wait(timeout=120)
            db.start()
        with psycopg.connect(db.dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM orders WHERE order_id LIKE 'b%'"
                                  ).fetchone()[0]
        partial += stored not in (0, n)
        outcomes.append(stored)
        # The import is idempotent: run it again to completion.
        again = subprocess.run(cmd, env=env, capture_output=True, text=True)  # noqa: S603
        with psycopg.connect(db.dsn) as conn:
            final = conn.execute("SELECT count(*) FROM orders WHERE order_id LIKE 'b%'"
                                 ).fetchone()[0]
        if again.returncode != 0 or final != n:
            raise AssertionError(f"rerun after the kill: exit {again.returncode}, {final}/{n}")
    return {"drill": f"{'process' if target == 'api' else 'db'}-bulk", "kills": rounds,
            "orders_per_file": n, "import_seconds": round(duration, 2),
            "killed_before_commit": outcomes.count(0),
            "killed_after_commit": outcomes.count(n), "partial_files": partial,
            "stored_after_kill": sorted(set(outcomes)), "reruns_complete": rounds}


# --- database down while serving -----------------------------------------------------------------

def db_down_drill(rounds: int, db: Database, server: Server, token: str) -> dict:
    paths = ["/v1/customers/dc-1/tier", "/v1/customers?limit=5", "/v1/segments", "/readyz"]
    statuses: dict[int, int] = {}
    not_problem = slowest = 0.0
    recover = []
    missing_retry_after = 0
    for _ in range(rounds):
        db.kill()
        for _ in range(2):
            for path in paths + ["/v1/orders"]:
                body = (json.dumps({"orders": [{
                    "order_id": "zdown-1", "customer_id": "dc-1", "channel": "web",
                    "ordered_at": "2025-06-01", "amount": "5.00"}]}).encode()
                    if path == "/v1/orders" else None)
                began = time.monotonic()
                status, headers, _ = request(server.base, path, token, body, timeout=30)
                slowest = max(slowest, time.monotonic() - began)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 503:
                    missing_retry_after += "Retry-After" not in headers
                    not_problem += headers.get("Content-Type") != "application/problem+json"
        db.start()
        began = time.monotonic()
        while True:
            status, _, _ = request(server.base, paths[0], token, timeout=30)
            if status in (200, 404):
                break
            if time.monotonic() - began > 60:
                raise AssertionError("the API did not recover within 60 s")
            time.sleep(0.05)
        recover.append(time.monotonic() - began)
    return {"drill": "db-down", "kills": rounds, "statuses_while_down": statuses,
            "non_problem_503s": int(not_problem), "503s_without_retry_after": missing_retry_after,
            "slowest_answer_while_down_s": round(slowest, 2),
            "recovery_seconds_max": round(max(recover), 2),
            "recovery_seconds_median": round(sorted(recover)[len(recover) // 2], 2)}


# --- scoring run killed midway -------------------------------------------------------------------

def scoring_drill(rounds: int, db: Database, data_dir: Path) -> dict:
    env = dict(os.environ, DATABASE_URL=db.dsn, CRM_DATA_DIR=str(data_dir),
               CRM_SCORE_SCHEDULE="off", CRM_LOG_LEVEL="ERROR")
    score = [sys.executable, "-m", "crm_service", "score", "--as-of", "2024-12-31", "--json"]
    # Realistic buy-till-you-die histories (the other drills' uniform random orders do not fit
    # a Gamma-Gamma model): 30,000 customers from bench/generate_orders.py.
    from bench.generate_orders import generate

    path = data_dir / "btyd.csv"
    generate(30_000, str(path), 0.0, 11, 100_000)
    with psycopg.connect(db.dsn) as conn:
        conn.execute("TRUNCATE orders, customers CASCADE")
    subprocess.run([sys.executable, "-m", "crm_service", "import", "orders", str(path)],
                   env=env, check=True, capture_output=True)  # noqa: S603
    began = time.monotonic()
    first = subprocess.run(score, env=env, capture_output=True, text=True)  # noqa: S603
    if first.returncode != 0:
        raise AssertionError(first.stderr)
    duration = time.monotonic() - began
    live = json.loads(first.stdout)["run_id"]
    marked_failed = still_live = finished = 0
    for _ in range(rounds):
        proc = subprocess.Popen(score, env=env, stdout=subprocess.DEVNULL,  # noqa: S603
                                stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.3, 0.8) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        worker = subprocess.Popen([sys.executable, "-m", "crm_service", "worker"],  # noqa: S603
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            while True:
                running = conn.execute("SELECT count(*) FROM scoring_runs"
                                       " WHERE status = 'running'").fetchone()[0]
                if running == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            active = conn.execute("SELECT active_run_id FROM scoring_state").fetchone()[0]
            newest, status = conn.execute("SELECT id, status FROM scoring_runs"
                                          " ORDER BY id DESC LIMIT 1").fetchone()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        marked_failed += running == 0
        if status == "succeeded":  # the kill came after it had published: it is the live run
            finished += 1
            still_live += active == newest
            live = newest
        else:
            still_live += active == live
    with psycopg.connect(db.dsn) as conn:
        failed = conn.execute("SELECT count(*) FROM scoring_runs WHERE status = 'failed'"
                              ).fetchone()[0]
    return {"drill": "scoring-kill", "kills": rounds, "run_seconds": round(duration, 1),
            "killed_runs_marked_failed_on_next_start": marked_failed,
            # A kill that came after the run had published leaves that run live (counted in
            # still_live when it is the live one): the runs' times vary by a few tenths.
            "killed_after_publishing": finished,
            "previous_run_still_live": still_live, "failed_runs_recorded": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--drills", default="api-rest,db-rest,api-bulk,db-bulk,db-down,"
                                            "scoring-kill")
    parser.add_argument("--bulk-orders", type=int, default=100_000)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="crm-bench-drill-"))
    os.environ.setdefault("CRM_SECRET_KEY", new_key_text())
    db = Database(data_dir)
    server = Server(db.dsn, data_dir)
    results = []
    try:
        with psycopg.connect(db.dsn) as conn:
            _, token = api_keys.create_key(conn, "drills", ["admin"])
        server.start()
        for drill in args.drills.split(","):
            began = time.monotonic()
            if drill in ("api-rest", "db-rest"):
                result = rest_drill(drill.split("-")[0], args.rounds, db, server, token)
            elif drill in ("api-bulk", "db-bulk"):
                result = bulk_drill(drill.split("-")[0], args.rounds, db, data_dir,
                                    args.bulk_orders)
            elif drill == "db-down":
                result = db_down_drill(args.rounds, db, server, token)
            elif drill == "scoring-kill":
                result = scoring_drill(args.rounds, db, data_dir)
            else:
                raise SystemExit(f"unknown drill {drill!r}")
            result["seconds"] = round(time.monotonic() - began, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        server.stop()
        db.stop()
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)  # noqa: S603, S607
    OUT.mkdir(exist_ok=True)
    report_path = OUT / "fault_drills.json"
    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    by_drill = {r["drill"]: r for r in previous.get("results", [])}
    for r in results:  # a run of some drills keeps the others' last figures
        by_drill[r["drill"]] = {**r, "command": "python bench/fault_drills.py "
                                + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d")}
    report = {"machine": machine(), "results": list(by_drill.values())}
    report_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
