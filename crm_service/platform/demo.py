"""The demo data set: the CDNOW sample shipped inside the lifetimes package.

``CDNOW_sample.txt`` holds 6,919 purchases of 2,357 customers (a 1/10 sample of the cohort that
first bought at CDNOW in Q1 1997), one line per purchase: master id, sample id, date, quantity,
amount. It is converted to the service's CSV format and loaded through the normal bulk import.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_service.ingestion.bulk import ImportSummary, import_orders
from crm_service.ingestion.records import ingest_customer_batch
from crm_service.platform.config import Settings
from crm_service.storage import customers as customer_store

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


# Made-up contact details, so the console's search by email, phone and channel account can be
# tried on the demo. All emails are @example.com (RFC 2606) and phones use the +86 138 0000 range.
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛",
          "明", "超", "秀英", "霞", "平", "刚", "桂英")


def demo_profile(number: int) -> dict[str, Any]:
    """The made-up profile of demo customer ``cdnow-NNNN`` (deterministic)."""
    name = _SURNAMES[number % len(_SURNAMES)] + _GIVEN[(number // len(_SURNAMES)) % len(_GIVEN)]
    identities = [{"channel": "tmall", "external_id": f"tb_{number:04d}"}]
    if number % 3 == 0:
        identities.append({"channel": "jd", "external_id": f"jd_{number:04d}"})
    return {"customer_id": f"cdnow-{number:04d}", "name": name,
            "email": f"cdnow-{number:04d}@example.com", "phone": f"+86 138 0000 {number:04d}",
            "identities": identities}


def load_demo_profiles(conn: psycopg.Connection, settings: Settings) -> int:
    """Give each demo customer a made-up profile (idempotent); return how many changed."""
    numbers = [int(cid.removeprefix("cdnow-"))
               for cid in customer_store.ids_without_email(conn, "cdnow-")]
    changed = 0
    for start in range(0, len(numbers), settings.max_batch_orders):
        batch: list[Mapping[str, Any]] = [
            demo_profile(n) for n in numbers[start:start + settings.max_batch_orders]]
        with conn.transaction():
            result = ingest_customer_batch(conn, settings, batch)
        changed += sum(r["outcome"] in {"inserted", "updated"} for r in result.results)
    return changed
