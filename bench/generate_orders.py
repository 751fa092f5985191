"""Generate a synthetic multi-channel order log for the bulk-import benchmark.

Customers buy a geometric number of times (mean ~2 orders) across channels over three years;
a small share of rows are refunds/cancellations and a configurable share is deliberately invalid,
so the reject path is exercised too.

    python bench/generate_orders.py --customers 1000000 --out bench/out/orders_1m.csv
"""

from __future__ import annotations

import argparse
import os

import numpy as np

CHANNELS = np.array(["tmall", "jd", "pinduoduo", "web", "store"])
CHANNEL_P = np.array([0.4, 0.25, 0.15, 0.15, 0.05])
STATUSES = np.array(["paid", "refunded", "cancelled"])
STATUS_P = np.array([0.96, 0.025, 0.015])
START = np.datetime64("2022-01-01T00:00:00")
SPAN_S = 3 * 365 * 86400


def generate(customers: int, out: str, invalid_share: float, seed: int, chunk: int) -> int:
    """Write the CSV to ``out`` and return the number of order rows."""
    rng = np.random.default_rng(seed)
    rows = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write("order_id,customer_id,ordered_at,amount,channel,status\n")
        for first in range(0, customers, chunk):
            n = min(chunk, customers - first)
            counts = rng.geometric(0.5, size=n)
            cust = np.repeat(np.arange(first, first + n), counts)
            m = cust.size
            secs = rng.integers(0, SPAN_S, size=m)
            ts = (START + secs.astype("timedelta64[s]")).astype(str)
            amount = np.round(rng.gamma(2.0, 40.0, size=m) + 1, 2)
            chan = rng.choice(CHANNELS, size=m, p=CHANNEL_P)
            status = rng.choice(STATUSES, size=m, p=STATUS_P)
            oid = np.arange(rows, rows + m)
            bad = rng.random(m) < invalid_share
            lines = []
            for i in range(m):
                amt = f"{amount[i]:.2f}" if not bad[i] else "-1.00"
                lines.append(
                    f"O{oid[i]},C{cust[i]},{ts[i]}+08:00,{amt},{chan[i]},{status[i]}\n"
                )
            fh.writelines(lines)
            rows += m
    return rows


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--out", default="bench/out/orders_1m.csv")
    p.add_argument("--invalid-share", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--chunk", type=int, default=100_000)
    a = p.parse_args()
    rows = generate(a.customers, a.out, a.invalid_share, a.seed, a.chunk)
    size = os.path.getsize(a.out)
    print(f"wrote {rows} orders for {a.customers} customers to {a.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
