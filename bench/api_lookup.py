"""Benchmark: GET /v1/customers/{id}/tier and GET /v1/customers/{id} under load (wrk).

Serves the API the way production does (`crm-service serve`: gunicorn with the keep-alive worker
and the lookup lane, request log on) against a database of about a million scored customers, and
drives it with wrk (Debian package `wrk`) from the same machine: closed loop (each connection
sends its next request when the previous answer arrives) at 64 and 16 connections. In a closed
loop mean latency is connections / throughput (Little's law), so at 64 connections it measures
capacity, and at 16 the latency of a busy but not queued-up server.

Which customers: every request draws one uniformly from *all* customers of the live run (the
whole id list is handed to wrk), as agents and tools looking up arbitrary customers do; the
``hot`` mix sends most requests to a small set (a campaign's audience being worked, an agent
queue), reported separately.

    apt-get install -y wrk
    python bench/api_lookup.py --keep /tmp/benchdb --csv bench/out/orders_1m_time.csv
    python bench/api_lookup.py --keep /tmp/benchdb --endpoints tier --mixes uniform \
        --connections 64 --after-publish 6 --seconds 20

With ``--keep DIR`` the database in DIR is reused (imported and scored on first use).
``--after-publish N`` then publishes a new run while the server is up and measures ``/tier``
in the N windows right after it. ``--server`` serves it other ways for comparison (the
reference before the lookup lane; granian, alone or with a micro-batcher).
Prints requests/s, latency percentiles, non-2xx responses and socket errors per endpoint.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402

# The ids reach wrk as one fixed-width string per set, not a Lua table: a table of a million
# strings makes LuaJIT's collector walk it over and over, and wrk's threads then stall for
# 100-300 ms at a time, which wrk reports as server latency (p99 120 ms against 18 ms measured
# with the string, same server, same minute).
LUA = """
local function load(path)
    local f = assert(io.open(path, "rb")); local blob = f:read("*a"); f:close()
    return blob, #blob / %(width)d
end
local ids, n = load("%(ids)s")
local hot, n_hot = load("%(hot)s")
local hot_share = %(hot_share)s
local W = %(width)d
local headers = {["Authorization"] = "Bearer %(token)s"}
local function pick(blob, count)
    local s = (math.random(count) - 1) * W + 1
    return blob:sub(s, s + W - 1):match("^%%S+")
end
init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
    local id
    if hot_share > 0 and math.random() < hot_share then id = pick(hot, n_hot)
    else id = pick(ids, n) end
    return wrk.format("GET", "/v1/customers/" .. id .. "%(suffix)s", headers)
end
done = function(summary, latency, requests)
    io.write(string.format("p99.9 %%.2fms max %%.2fms\\n", latency:percentile(99.9) / 1000,
                           latency.max / 1000))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def _wrk(port: int, script: Path, seconds: int, connections: int, threads: int) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout",
         "5s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True).stdout

    def grab(pattern: str, default: str = "0") -> str:
        m = re.search(pattern, out, re.MULTILINE)
        return m.group(1) if m else default

    def ms(text: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]

    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "requests": int(grab(r"(\d+) requests in")),
        # Anchored: "Thread Stats" lines end in percentages too (e.g. "67.50%").
        "p50_ms": ms(grab(r"^\s+50%\s+(\S+)")), "p90_ms": ms(grab(r"^\s+90%\s+(\S+)")),
        "p99_ms": ms(grab(r"^\s+99%\s+(\S+)")),
        "p999_ms": float(grab(r"^p99\.9 ([\d.]+)ms", "nan")),
        "max_ms": float(grab(r"max ([\d.]+)ms$", "nan")),
        "non_2xx": int(grab(r"Non-2xx or 3xx responses:\s+(\d+)")),
        "socket_errors": sum(int(x) for x in re.findall(
            r"(?:connect|read|write|timeout) (\d+)", grab(r"Socket errors: (.*)", ""))),
        "raw": out,
    }


def _cpu_ticks(server_group: int, postmaster: int) -> dict[str, int]:
    """CPU time (clock ticks) used so far by the API server's processes (its process group)
    and this database's PostgreSQL processes (the postmaster and its children)."""
    out = {"api server": 0, "postgres": 0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ppid, pgid = int(fields[1]), int(fields[2])
        kind = "api server" if pgid == server_group \
            else "postgres" if postmaster in (int(pid), ppid) else None
        if kind:
            out[kind] += int(fields[11]) + int(fields[12])  # utime + stime
    return out


def _cpu_split(before: dict[str, int], after: dict[str, int], children_before: float,
               requests: int) -> str:
    """Per request: CPU ms in the API server, PostgreSQL and wrk (from rusage of children)."""
    import resource

    hz = os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_s = usage.ru_utime + usage.ru_stime - children_before
    parts = {k: (after[k] - before[k]) / hz for k in after} | {"wrk": wrk_s}
    return "CPU per request: " + ", ".join(
        f"{k} {v / max(requests, 1) * 1000:.3f} ms" for k, v in parts.items())


def _download(port: int, token: str, query: str) -> tuple[float, int, int]:
    """Seconds, rows and bytes of one CSV audience streamed over HTTP."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/customers?{query}",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Accept": "text/csv"})
    began = time.perf_counter()
    rows = size = 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        while chunk := resp.read(1 << 16):
            rows += chunk.count(b"\n")
            size += len(chunk)
    return time.perf_counter() - began, rows - 1, size


def _export(port: int, token: str, seconds: int, work: Path) -> None:
    """The 100k audience as CSV over gunicorn, then /tier lookups while exports stream."""
    import threading

    wall, rows, size = _download(port, token, "value_segment=high")
    print(f"export value_segment=high over HTTP: {rows} customers, {size / 1e6:.1f} MB, "
          f"{wall:.2f} s")
    script = work / "tier-uniform.lua"
    if not script.exists():
        return
    stop = threading.Event()
    done: list[float] = []

    def exporting() -> None:
        while not stop.is_set():
            done.append(_download(port, token, "tier=dormant")[0])

    streams = [threading.Thread(target=exporting) for _ in range(2)]
    for t in streams:
        t.start()
    time.sleep(1)
    r = _wrk(port, script, seconds, 64, 2)
    stop.set()
    for t in streams:
        t.join()
    _report("tier, 64 connections, while 2 clients stream tier=dormant exports", r)
    print(f"  exports finished meanwhile: {len(done)}, "
          f"{sum(done) / max(len(done), 1):.1f} s each")


def _report(label: str, r: dict) -> None:
    print(f"{label}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms, p99.9 {r['p999_ms']:.1f} ms, max {r['max_ms']:.1f} ms, "
          f"{r['requests']} requests, non-2xx {r['non_2xx']}, "
          f"socket errors {r['socket_errors']}")


def _publish(env: dict[str, str], as_of: str) -> float:
    """Run and publish a new scoring run (the server keeps serving); its wall time."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crm_service", "score", "--as-of", as_of], env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - began


def _server_command(kind: str, port: int, workers: int, threads: int,
                    env: dict[str, str]) -> list[str]:
    if kind == "reference":
        env["CRM_LOOKUP_LANE"] = "off"
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
                str(workers), "--timeout", "120", "--no-control-socket", "--worker-class",
                "api.serving.server.ProblemSyncWorker", "api.wsgi:app"]
    if kind in ("granian", "granian-batched"):
        target = "api.wsgi:app" if kind == "granian" else "bench.granian_batched:app"
        return [str(Path(sys.executable).with_name("granian")), "--interface", "wsgi",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--blocking-threads", str(max(threads, 8 if kind == "granian-batched" else 1)),
                "--no-ws", "--log-level", "warning", target]
    return [sys.executable, "-m", "crm_service", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--threads", str(threads),
            *(["--http-worker", "threads"] if kind == "gthread" else [])]


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="reuse (or create) the database in this directory")
    ap.add_argument("--csv", default="bench/out/orders_1m_time.csv")
    ap.add_argument("--as-of", default="2024-12-31")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4,
                    help="threads per worker (serve's default, for requests off the fast lane)")
    ap.add_argument("--connections", type=lambda t: [int(x) for x in t.split(",")],
                    default=[64, 16], help="comma-separated; each is one closed-loop run")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--endpoints", default="tier,profile,export",
                    help="tier, profile (wrk), export (a CSV audience over HTTP, and /tier "
                         "under wrk while exports stream)")
    ap.add_argument("--mixes", default="uniform,hot",
                    help="uniform: every request a customer drawn uniformly from the whole live "
                         "run; hot: --hot-share of the requests go to --hot-customers customers "
                         "(drawn uniformly once), the rest uniform. Reported separately")
    ap.add_argument("--hot-customers", type=int, default=1000)
    ap.add_argument("--hot-share", type=float, default=0.9)
    ap.add_argument("--after-publish", type=int, default=0, metavar="N",
                    help="then publish a new run (crm-service score, the server up) and measure "
                         "/tier (uniform, 64 connections) in N windows of --seconds right after")
    ap.add_argument("--server", default="gunicorn",
                    choices=("gunicorn", "gthread", "reference", "granian", "granian-batched"),
                    help="gunicorn: `crm-service serve` as shipped; gthread: `serve "
                         "--http-worker threads` (the exit plan); reference: how it served "
                         "before the lookup lane (gunicorn sync workers, every request through "
                         "Flask: CRM_LOOKUP_LANE=off); granian: the same app under granian's "
                         "Rust HTTP server, each lookup alone; granian-batched: granian with "
                         "the micro-batcher of bench/granian_batched.py (experiments: `pip "
                         "install granian`)")
    ap.add_argument("--cpu-split", action="store_true",
                    help="also print CPU time per request in the API server, PostgreSQL and wrk")
    a = ap.parse_args()
    dsn, data_dir = fresh_database(a.keep)
    # The limiter stays on (its cost is part of the measurement), with a limit wrk never meets.
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir),
               CRM_RATE_LIMIT_PER_SECOND="1000000", CRM_RATE_LIMIT_BURST="1000000")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    import psycopg

    from crm_service.access import api_keys

    with psycopg.connect(dsn) as conn:
        live = conn.execute("SELECT active_run_id FROM scoring_state").fetchone()
    if not live or live[0] is None:
        for cmd in (["import", "orders", a.csv, "--report", str(data_dir / "rejects.csv")],
                    ["score", "--as-of", a.as_of]):
            subprocess.run([sys.executable, "-m", "crm_service", *cmd], env=env, check=True,
                           capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="crm-wrk-"))
    atexit.register(shutil.rmtree, work, True)
    with psycopg.connect(dsn) as conn:
        _, token = api_keys.create_key(conn, "bench-wrk", ["scores:read", "customers:read"])
        # Every customer of the live run: wrk draws uniformly among all of them per request.
        ids = [r[0] for r in conn.execute(
            "SELECT s.customer_id FROM customer_scores s"
            " JOIN scoring_state st ON s.run_id = st.active_run_id").fetchall()]
        hot = [r[0] for r in conn.execute(
            "SELECT s.customer_id FROM customer_scores s"
            " JOIN scoring_state st ON s.run_id = st.active_run_id"
            " ORDER BY random() LIMIT %s", (a.hot_customers,)).fetchall()]
        conn.commit()
    width = max(map(len, ids))
    (work / "ids.txt").write_text("".join(i.ljust(width) for i in ids))
    (work / "hot.txt").write_text("".join(i.ljust(width) for i in hot))
    port = _free_port()
    command = _server_command(a.server, port, a.workers, a.threads, env)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    # The database's postmaster: its PID is the first line of postmaster.pid.
    pid_file = next(Path(data_dir).rglob("postmaster.pid"), None)
    postmaster = int(pid_file.read_text().split()[0]) if pid_file else -1
    print(f"machine: {machine()}")
    print(f"live run: {len(ids)} customers, every one a possible draw; hot mix: "
          f"{a.hot_share:.0%} of requests to {len(hot)} customers; {a.server} {a.workers} "
          f"workers x {a.threads} threads; wrk -t2 -d{a.seconds}s, closed loop")

    def script_for(name: str, mix: str) -> Path:
        script = work / f"{name}-{mix}.lua"
        script.write_text(LUA % {"ids": work / "ids.txt", "hot": work / "hot.txt", "width": width,
                                 "hot_share": a.hot_share if mix == "hot" else 0,
                                 "token": token, "suffix": {"tier": "/tier", "profile": ""}[name]})
        return script

    try:
        _wait_ready(port)
        for name in a.endpoints.split(","):
            if name == "export":
                _export(port, token, a.seconds, work)
                continue
            for mix in a.mixes.split(","):
                script = script_for(name, mix)
                _wrk(port, script, 5, 64, 2)  # warm-up: caches, connections
                for connections in a.connections:
                    import resource

                    ticks = _cpu_ticks(server.pid, postmaster)
                    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                    r = _wrk(port, script, a.seconds, connections, 2)
                    _report(f"{name}, {mix}, {connections} connections", r)
                    if a.cpu_split:
                        print("  " + _cpu_split(ticks, _cpu_ticks(server.pid, postmaster),
                                                usage.ru_utime + usage.ru_stime, r["requests"]))
        if a.after_publish:
            wall = _publish(env, a.as_of)
            print(f"published a new run ({wall:.0f} s, server up); /tier right after:")
            script = script_for("tier", "uniform")
            for window in range(a.after_publish):
                r = _wrk(port, script, a.seconds, 64, 2)
                _report(f"  tier, uniform, 64 connections, {window * a.seconds}-"
                        f"{(window + 1) * a.seconds} s after the publish", r)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
