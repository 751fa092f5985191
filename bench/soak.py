"""Soak benchmark: one base scored on many consecutive days, as a nightly schedule does.

Imports the order file into a fresh embedded database once, then runs `crm-service score` as of
day d, d+1, ... (a child process each, default settings but retention), and records for every
run its wall time, peak RSS, stage seconds, the database size and the score rows kept. Checks
the goals of issue 16: from the 8th run on the database stays within 10% of its size after the
8th run, and the last run is no slower than the 3rd by more than 10%.

    python bench/soak.py --csv bench/out/orders_1m_time.csv --start 2024-12-02 --runs 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one child process."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description="soak: consecutive nightly scoring runs")
    ap.add_argument("--csv", default="bench/out/orders_1m_time.csv")
    ap.add_argument("--start", default="2024-12-02", help="as_of of the first run")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json-out", default=None, help="write every run's record here")
    a = ap.parse_args()
    dsn, data_dir = fresh_database()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir))
    subprocess.run([sys.executable, "-m", "crm_service", "import", "orders", a.csv, "--json",
                    "--report", str(data_dir / "rejects.csv")], env=env, check=True,
                   capture_output=True)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE orders")
    print(f"machine: {machine()}")
    print(f"file: {a.csv}; {a.runs} runs from {a.start}")
    print("| run | as_of | wall s | peak RSS MB | stages (s) | database MB | score rows |"
          " partitions | events |")
    print("|---|---|---|---|---|---|---|---|---|")
    records = []
    start = date.fromisoformat(a.start)
    for k in range(a.runs):
        as_of = start + timedelta(days=k)
        wall, rss, out = _run([sys.executable, "-m", "crm_service", "score", "--as-of",
                               as_of.isoformat(), "--json"], env)
        run = json.loads(out)
        with psycopg.connect(dsn, autocommit=True) as conn:
            size, rows, parts, events = conn.execute(
                "SELECT pg_database_size(current_database()), (SELECT count(*) FROM"
                " customer_scores), (SELECT count(*) FROM pg_inherits WHERE inhparent ="
                " 'customer_scores'::regclass), (SELECT count(*) FROM events)").fetchone()
        stages = run["counts"].get("stage_seconds", {})
        record = {"run": k + 1, "as_of": as_of.isoformat(), "wall": wall, "rss_mb": rss,
                  "stages": stages, "db_mb": size / 2**20, "score_rows": rows,
                  "partitions": parts, "events": events, "retired": run["retired_runs"]}
        records.append(record)
        print(f"| {k + 1} | {as_of} | {wall:.1f} | {rss:.0f} | "
              + ", ".join(f"{s} {v:.1f}" for s, v in stages.items())
              + f" | {size / 2**20:,.0f} | {rows:,} | {parts} | {events:,} |", flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(records, indent=1))
    if len(records) >= 8:
        base = records[7]["db_mb"]
        worst = max(abs(r["db_mb"] - base) / base for r in records[7:])
        print(f"database size from run 8 on: within {worst:.1%} of run 8's {base:,.0f} MB"
              f" (goal 10%): {'met' if worst <= 0.10 else 'NOT met'}")
    if len(records) >= 3:
        ratio = records[-1]["wall"] / records[2]["wall"]
        print(f"run {len(records)} / run 3 wall time: {ratio:.2f} (goal <= 1.10): "
              f"{'met' if ratio <= 1.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
