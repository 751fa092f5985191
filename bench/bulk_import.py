"""Benchmark: bulk import of a synthetic order log (1M customers, ~2M orders).

Runs ``crm-service import orders`` as a child process against a fresh embedded PostgreSQL and
measures wall time and the importing process's peak RSS; then, in the same run and on a fresh
database, a reference: the pandas script a data engineer would write (read_csv in chunks,
vectorised checks, COPY into a plain table), which does *no* upsert, no per-row error report and
no dedup. Both the customer-grouped and the time-ordered file (the same orders) are measured,
``--runs`` times each. Prints Markdown rows for BENCHMARKS.md.

    python bench/bulk_import.py              # generates bench/out/orders_1m{,_time}.csv if missing
    python bench/bulk_import.py --customers 100000 --runs 3
    python bench/bulk_import.py --order time --csv bench/out/orders_1m_time.csv
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402
from bench.generate_orders import generate  # noqa: E402


def run_import(dsn: str, csv_path: Path, data_dir: Path) -> tuple[float, float, dict]:
    """Run the CLI import as a child; return wall seconds, that child's peak RSS MB, its JSON."""
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "crm_service", "import", "orders", str(csv_path), "--json",
           "--report", str(data_dir / "rejects.csv")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children,
    # the reference script included).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out)
    return wall, usage.ru_maxrss / 1024, json.loads(out)


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


def default_csv(customers: int, order: str) -> Path:
    """Where the generated file for ``customers`` and ``order`` lives under bench/out/."""
    size = "1m" if customers == 1_000_000 else str(customers)
    return Path(f"bench/out/orders_{size}{'_time' if order == 'time' else ''}.csv")


def measure(csv_path: Path, order: str, again: bool) -> tuple[int, list[str]]:
    """Import ``csv_path`` into a fresh database (and again if asked), then the reference."""
    dsn, data_dir = fresh_database()
    wall, rss, counts = run_import(dsn, csv_path, data_dir)
    rows = counts["rows"]
    out = [f"| crm-service import orders, {order}-ordered, empty database | {wall:.1f} | "
           f"{rows / wall:,.0f} | {rss:.0f} |"]
    if again:
        second, _, counts2 = run_import(dsn, csv_path, data_dir)
        assert counts2["inserted"] == 0 and counts2["duplicates"] == counts["inserted"], counts2
        out.append(f"| same file again, {order}-ordered (all duplicates) | {second:.1f} | "
                   f"{rows / second:,.0f} | - |")
    ref_dsn, _ = fresh_database()
    ref_wall, ref_rss = run_reference(ref_dsn, csv_path)
    out.append(f"| reference pandas+COPY, no upsert, {order}-ordered | {ref_wall:.1f} | "
               f"{rows / ref_wall:,.0f} | {ref_rss:.0f} |")
    out.append(f"| ratio crm-service / reference ({order}-ordered) | {wall / ref_wall:.2f} | | |")
    print(json.dumps({"file": str(csv_path), **counts}), flush=True)
    return rows, out


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description="bulk import benchmark")
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--order", choices=("customer", "time", "both"), default="both")
    p.add_argument("--csv", default=None, help="the file to import (with one --order only)")
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args()
    orders = ("customer", "time") if a.order == "both" else (a.order,)
    if a.csv and len(orders) > 1:
        p.error("--csv needs --order customer or --order time")
    print(f"machine: {machine()}")
    table = ["| what | wall s | rows/s | peak RSS MB |", "|---|---|---|---|"]
    for order in orders:
        csv_path = Path(a.csv) if a.csv else default_csv(a.customers, order)
        if not csv_path.exists():
            generate(a.customers, str(csv_path), 0.001, 42, 100_000, order)
        size_mb = csv_path.stat().st_size / 1e6
        for run in range(a.runs):
            rows, lines = measure(csv_path, order, again=run == 0)
            table += [line.replace(" |", f" (run {run + 1}) |", 1) for line in lines]
        print(f"file: {csv_path} ({size_mb:.0f} MB, {rows} rows, {order}-ordered)")
    print("\n".join(table))
    _ = io  # keep import for the reference's clarity


if __name__ == "__main__":
    main()
