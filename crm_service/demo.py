"""The demo data set: the CDNOW sample shipped inside the lifetimes package.

``CDNOW_sample.txt`` holds 6,919 purchases of 2,357 customers (a 1/10 sample of the cohort that
first bought at CDNOW in Q1 1997), one line per purchase: master id, sample id, date, quantity,
amount. It is converted to the service's CSV format and loaded through the normal bulk import.
"""

from __future__ import annotations

import csv
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from crm_service.bulk_import import ImportSummary, import_orders
from crm_service.config import Settings

if TYPE_CHECKING:
    import psycopg

CHANNEL = "web"
# The CDNOW cohort's purchases run to 1998-06-30; the demo scores as of that day.
CDNOW_AS_OF = date(1998, 6, 30)


def cdnow_sample_path() -> Path:
    """Location of ``CDNOW_sample.txt`` inside the installed lifetimes package."""
    return Path(str(resources.files("lifetimes") / "datasets" / "CDNOW_sample.txt"))


def write_cdnow_csv(out: Path) -> int:
    """Convert the CDNOW sample to an order CSV at ``out``; return the number of orders."""
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(cdnow_sample_path(), encoding="ascii") as src, \
            open(out, "w", encoding="utf-8", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["order_id", "customer_id", "ordered_at", "amount", "channel"])
        for line in src:
            parts = line.split()
            if len(parts) != 5:
                continue
            n += 1
            _master, sample_id, ymd, _qty, amount = parts
            w.writerow([f"cdnow-{n:05d}", f"cdnow-{int(sample_id):04d}",
                        f"{ymd[:4]}-{ymd[4:6]}-{ymd[6:]}", f"{float(amount):.2f}", CHANNEL])
    return n


def load_cdnow_sample(conn: psycopg.Connection, settings: Settings) -> ImportSummary:
    """Load the CDNOW sample (idempotent: a second load finds only duplicates)."""
    path = settings.data_dir / "demo" / "cdnow_sample_orders.csv"
    write_cdnow_csv(path)
    return import_orders(conn, settings, path)
