"""Benchmark: one full scoring run (summary, fits, backtest, scores, publish) in PostgreSQL.

Loads the synthetic order log (bench/generate_orders.py) into a fresh embedded database with the
bulk import (not timed), then times `crm-service score --json` as a child process and reports its
wall time and peak RSS.

    python bench/scoring_run.py --csv bench/out/orders_1m.csv --as-of 2024-12-31
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description="scoring run benchmark")
    ap.add_argument("--csv", default="bench/out/orders_1m.csv")
    ap.add_argument("--as-of", default="2024-12-31")
    a = ap.parse_args()
    dsn, data_dir = fresh_database()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir))
    subprocess.run([sys.executable, "-m", "crm_service", "import", "orders", a.csv, "--json",
                    "--report", str(data_dir / "rejects.csv")], env=env, check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "crm_service", "score", "--as-of", a.as_of,
                          "--json"], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run = json.loads(out.stdout)
    print(f"machine: {machine()}")
    print(f"| crm-service score, {run['counts']['customers']:,} customers | {wall:.1f} s "
          f"| peak RSS {rss:.0f} MB (max over child processes) | selected "
          f"{run['models']['selected']} |")


if __name__ == "__main__":
    main()
