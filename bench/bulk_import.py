"""Benchmark: bulk import of a synthetic order log (1M customers, ~2M orders).

Runs ``crm-service import orders`` as a child process against a fresh embedded PostgreSQL and
measures wall time and the importing process's peak RSS; then, in the same run and on a fresh
database, a reference: the pandas script a data engineer would write (read_csv in chunks,
vectorised checks, COPY into a plain table), which does *no* upsert, no per-row error report and
no dedup. Prints a Markdown row for BENCHMARKS.md.

    python bench/bulk_import.py                  # generates bench/out/orders_1m.csv if missing
    python bench/bulk_import.py --customers 100000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402
from bench.generate_orders import generate  # noqa: E402


def run_import(dsn: str, csv_path: Path, data_dir: Path) -> tuple[float, float, dict]:
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "crm_service", "import", "orders", str(csv_path), "--json",
           "--report", str(data_dir / "rejects.csv")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:  # ru_maxrss of children is the max over all children so far
        peak = before
    return wall, peak / 1024, json.loads(out.stdout)


REFERENCE = r'''
import io, sys, time, resource
import pandas as pd, psycopg
dsn, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
with psycopg.connect(dsn) as conn:
    conn.execute("CREATE TABLE ref_orders (order_id text, customer_id text, channel text,"
                 " ordered_at timestamptz, amount numeric(14,2), status text)")
    rows = 0
    for chunk in pd.read_csv(path, chunksize=200_000, dtype=str, keep_default_na=False):
        ts = pd.to_datetime(chunk["ordered_at"], errors="coerce", utc=True, format="ISO8601")
        amt = pd.to_numeric(chunk["amount"], errors="coerce")
        ok = ts.notna() & amt.notna() & (amt >= 0)
        good = chunk[ok].assign(ordered_at=ts[ok].astype(str))
        buf = io.StringIO()
        good[["order_id", "customer_id", "channel", "ordered_at", "amount", "status"]].to_csv(
            buf, index=False, header=False)
        with conn.cursor().copy("COPY ref_orders FROM STDIN (FORMAT csv)") as cp:
            cp.write(buf.getvalue())
        rows += int(ok.sum())
    conn.execute("ALTER TABLE ref_orders ADD PRIMARY KEY (channel, order_id)")
    conn.execute("CREATE INDEX ON ref_orders (customer_id, ordered_at)")
print(rows, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''


def run_reference(dsn: str, csv_path: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", REFERENCE, dsn, str(csv_path)],
                         capture_output=True, text=True, check=True)
    _rows, wall, rss = out.stdout.split()
    return float(wall), float(rss)


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description="bulk import benchmark")
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--csv", default=None)
    a = p.parse_args()
    csv_path = Path(a.csv or f"bench/out/orders_{a.customers}.csv")
    if not csv_path.exists():
        generate(a.customers, str(csv_path), 0.001, 42, 100_000)
    size_mb = csv_path.stat().st_size / 1e6
    dsn, data_dir = fresh_database()
    wall, rss, counts = run_import(dsn, csv_path, data_dir)
    again, _, counts2 = run_import(dsn, csv_path, data_dir)
    ref_dsn, _ = fresh_database()
    ref_wall, ref_rss = run_reference(ref_dsn, csv_path)
    rows = counts["rows"]
    print(f"machine: {machine()}")
    print(f"file: {csv_path} ({size_mb:.0f} MB, {rows} rows)")
    print(json.dumps(counts))
    print("| what | wall s | rows/s | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| crm-service import orders (fresh db) | {wall:.1f} | {rows / wall:,.0f} | {rss:.0f} |")
    print(f"| same file again (all duplicates) | {again:.1f} | {rows / again:,.0f} | - |")
    print(f"| reference pandas+COPY, no upsert | {ref_wall:.1f} | {rows / ref_wall:,.0f} "
          f"| {ref_rss:.0f} |")
    print(f"ratio crm-service / reference wall time: {wall / ref_wall:.2f}")
    assert counts2["inserted"] == 0 and counts2["duplicates"] == counts["inserted"], counts2
    _ = io  # keep import for the reference's clarity


if __name__ == "__main__":
    main()
