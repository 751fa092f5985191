"""Benchmark: stream a ~100k-customer audience as CSV from GET /v1/customers.

Imports the synthetic order log into a fresh embedded database and scores it (untimed), then
times `GET /v1/customers?value_segment=high` with `Accept: text/csv` (the top 10% by spend:
~97k of 973k customers) through the Flask app in-process (WSGI test client: no network, no
gunicorn), and a larger audience for scale.

    python bench/audience_csv.py --csv bench/out/orders_1m.csv --as-of 2024-12-31
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default="bench/out/orders_1m.csv")
    ap.add_argument("--as-of", default="2024-12-31")
    a = ap.parse_args()
    dsn, data_dir = fresh_database()
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir))
    for cmd in (["import", "orders", a.csv, "--report", str(data_dir / "rejects.csv")],
                ["score", "--as-of", a.as_of]):
        subprocess.run([sys.executable, "-m", "crm_service", *cmd], env=env, check=True,
                       capture_output=True)
    import psycopg

    from api import create_app
    from crm_service.access import api_keys
    from crm_service.platform.config import load_settings

    app = create_app(dataclasses.replace(load_settings(), database_url=dsn), dsn=dsn)
    with psycopg.connect(dsn) as conn:
        _, token = api_keys.create_key(conn, "bench", ["scores:read"])
        conn.commit()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/csv"}
    print(f"machine: {machine()}")
    for query in ({"value_segment": "high"}, {"tier": "dormant"}):
        t0 = time.perf_counter()
        r = client.get("/v1/customers", query_string=query, headers=headers)
        body = r.get_data()
        wall = time.perf_counter() - t0
        rows = body.count(b"\n") - 1
        print(f"| CSV audience {query} | {rows:,} customers | {wall:.2f} s "
              f"| {len(body) / 1e6:.1f} MB | status {r.status_code} |")


if __name__ == "__main__":
    main()
