"""Generate a synthetic multi-channel order log for the import, scoring and churn benchmarks.

Customers behave as the buy-till-you-die models assume, so the log has what a real base has:
acquisition spread over time, heterogeneous purchase rates, dropout, and a spend level per
customer. Each customer

- arrives at a uniform time in the first 30 months of a three-year span (first order then);
- buys at a Poisson rate lambda ~ Gamma(0.5, mean 1/400 days) while alive;
- stays alive for an exponential time with rate mu ~ Gamma(0.9, mean 1/500 days);
- spends Gamma(4, rate nu) per order with nu ~ Gamma(6, mean 0.05) (order value ~95).

That is about two orders per customer. A small share of rows are refunds or cancellations and a
configurable share is deliberately invalid, so the reject path is exercised too. The output is
the same for the same seed and chunk size.

``--order customer`` (the default) writes each customer's orders together, customer after
customer. ``--order time`` writes the very same records ordered by ``ordered_at``, as a
marketplace export is: one customer's orders are then spread over the whole file.

    python bench/generate_orders.py --customers 1000000 --out bench/out/orders_1m.csv
    python bench/generate_orders.py --customers 1000000 --order time \
        --out bench/out/orders_1m_time.csv
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
DAY_S = 86400
SPAN_DAYS = 3 * 365
ARRIVAL_DAYS = 30 * 365 // 12


def _customers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: order times (days from START, first order first) and their amounts."""
    first = rng.uniform(0, ARRIVAL_DAYS, size=n)
    lam = rng.gamma(0.5, 1 / (0.5 * 400), size=n)
    mu = rng.gamma(0.9, 1 / (0.9 * 500), size=n)
    alive_until = first + rng.exponential(1 / mu)
    window = np.clip(np.minimum(alive_until, SPAN_DAYS) - first, 0, None)
    repeats = rng.poisson(lam * window)
    counts = repeats + 1
    owner = np.repeat(np.arange(n), counts)
    offset = rng.uniform(0, 1, size=owner.size) * np.repeat(window, counts)
    starts = np.cumsum(counts) - counts
    offset[starts] = 0.0  # each customer's first order opens their history
    days = np.repeat(first, counts) + offset
    nu = rng.gamma(6.0, 0.05 / 6.0, size=n)  # amount ~ Gamma(4, rate nu): mean 4/nu ~ 95
    amount = rng.gamma(4.0, 1 / np.repeat(nu, counts)) + 1
    return owner, days, amount


ORDERS = ("customer", "time")


def generate(customers: int, out: str, invalid_share: float, seed: int, chunk: int,
             order: str = "customer") -> int:
    """Write the CSV to ``out`` and return the number of order rows.

    ``order="time"`` writes the same records as ``"customer"``, sorted by time (ties keep
    their customer order), so the two files hold identical orders.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    rng = np.random.default_rng(seed)
    rows = 0
    # For time order every line and its timestamp are held until the end (~0.3 GB for 1M
    # customers); customer order streams chunk by chunk.
    held: list[str] = []
    held_secs: list[np.ndarray] = []
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write("order_id,customer_id,ordered_at,amount,channel,status\n")
        for first in range(0, customers, chunk):
            n = min(chunk, customers - first)
            owner, days, amount = _customers(rng, n)
            cust = owner + first
            m = cust.size
            secs = (days * DAY_S).astype(np.int64)
            ts = (START + secs.astype("timedelta64[s]")).astype(str)
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
            if order == "time":
                held.extend(lines)
                held_secs.append(secs)
            else:
                fh.writelines(lines)
            rows += m
        if order == "time" and held:
            by_time = np.argsort(np.concatenate(held_secs), kind="stable")
            fh.writelines([held[i] for i in by_time])
    return rows


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--out", default="bench/out/orders_1m.csv")
    p.add_argument("--invalid-share", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--order", choices=ORDERS, default="customer",
                   help="customer: each customer's orders together (default); time: the same "
                        "records ordered by ordered_at, as a marketplace export")
    a = p.parse_args()
    rows = generate(a.customers, a.out, a.invalid_share, a.seed, a.chunk, a.order)
    size = os.path.getsize(a.out)
    print(f"wrote {rows} orders for {a.customers} customers to {a.out} ({size / 1e6:.1f} MB, "
          f"{a.order} order)")


if __name__ == "__main__":
    main()
