"""Benchmark: one full scoring run (summary, fits, backtest, scores, publish) in PostgreSQL.

Loads the synthetic order log (bench/generate_orders.py) into a fresh embedded database with the
bulk import and lets PostgreSQL analyse it (not timed; autovacuum does this in a live
database), then times `crm-service score --json` as a child process and reports its wall time
and peak RSS. In the same run, the reference (bench/reference_scoring.py: pandas + lifetimes on
the same CSV, no database) is timed the same way; the ratio is printed.

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
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--second-run", action="store_true",
                    help="also time a second run on the same data (steady state)")
    ap.add_argument("--churn-model", choices=["auto", "ml", "baseline"], default="auto",
                    help="CRM_CHURN_MODEL for the run (ml: always time the full ML path)")
    a = ap.parse_args()
    dsn, data_dir = fresh_database()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir),
               CRM_CHURN_MODEL=a.churn_model)
    t0 = time.perf_counter()
    imported = subprocess.run([sys.executable, "-m", "crm_service", "import", "orders", a.csv,
                               "--json", "--report", str(data_dir / "rejects.csv")], env=env,
                              check=True, capture_output=True, text=True)
    import_wall = time.perf_counter() - t0
    import_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE orders")
        before = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "crm_service", "score", "--as-of", a.as_of,
                          "--json"], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run = json.loads(out.stdout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    print(f"machine: {machine()}")
    print(f"import: {import_wall:.1f} s, peak RSS {import_rss:.0f} MB, "
          f"{json.loads(imported.stdout)}")
    print(f"database: {before / 2**20:,.0f} MB after the import, {after / 2**20:,.0f} MB after"
          " the run")
    print(f"| crm-service score, {run['counts']['customers']:,} customers | {wall:.1f} s "
          f"| peak RSS {rss:.0f} MB | selected {run['models']['selected']} |")
    stages = run["counts"].get("stage_seconds", {})
    print("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    churn = run["models"].get("churn", {})
    print(f"churn: {churn.get('used')} ({churn.get('reason')}); training rows "
          f"{churn.get('training_rows')}; churn stage {stages.get('churn', 0):.1f} s")
    if churn.get("validation"):
        v = churn["validation"]
        print("validation: " + "; ".join(
            f"{k} AUC {m['roc_auc']:.4f} Brier {m['brier']:.4f} ECE {m['ece']:.4f} "
            f"lift {m['top_decile_lift']:.2f}" for k, m in v.items()))
    if not a.skip_reference:
        script = Path(__file__).resolve().parent / "reference_scoring.py"
        t0 = time.perf_counter()
        ref = subprocess.run([sys.executable, str(script), a.csv, a.as_of], check=True,
                             capture_output=True, text=True)
        ref_wall = time.perf_counter() - t0
        out_ref = json.loads(ref.stdout)
        print(f"| reference: pandas + lifetimes script, {out_ref['customers']:,} customers "
              f"| {ref_wall:.1f} s | peak RSS {out_ref['peak_rss_mb']:.0f} MB | BG/NBD only |")
        print(f"reference / crm-service wall time: {ref_wall / wall:.2f}")
    if a.second_run:
        # Steady state: the same day scored again, as a scheduled re-run finds it. Tier history
        # then records only the customers whose tier changed, not every customer's first tier.
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "crm_service", "score", "--as-of",
                              a.as_of, "--json"], env=env, check=True, capture_output=True,
                             text=True)
        again = json.loads(out.stdout)
        stages = again["counts"].get("stage_seconds", {})
        print(f"| second run, same as_of | {time.perf_counter() - t0:.1f} s | stages "
              + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + " |")


if __name__ == "__main__":
    main()
