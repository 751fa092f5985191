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

``--buyer-ids`` writes what a marketplace export holds instead of a CRM customer id: the header is
``order_id,channel,buyer_id,ordered_at,amount,status`` and ``buyer_id`` is the customer's account
on that order's channel (``tmall-582041337``: one account per channel used, unique per channel
and customer, its number a scramble of the customer's so it tells nothing about who it is). Each
customer then has a home channel (drawn with the channel shares) that gets all their orders,
except for ``--two-channel-share`` of the customers (default 0.1, all with two orders or more):
they also buy on a second, distinct channel, which gets about half of their orders (never the
first, always at least one). The orders themselves (ids, times, amounts, statuses, invalid rows)
are exactly those of the file without ``--buyer-ids``; only the channel and the id differ.

``--profiles-out PATH`` (with ``--buyer-ids``) also writes the channels' customer profiles,
``channel,buyer_id,phone``, one row per account, grouped by channel as each channel's export
would be: both accounts of every two-channel customer and 30% of the other accounts. Phones are
Chinese mobile numbers (13 and nine digits, one per customer, distinct customers never share
one); the two accounts of a two-channel customer have the same number written differently,
``+86 138-0000-2222`` on one and ``13800002222`` or ``138 0000 2222`` on the other. Linking the
accounts that share a number finds exactly the two-channel customers.

Without ``--buyer-ids`` the output is byte for byte what it was before these options existed:
their random draws come from a second generator (seeded from ``[seed, 1]``), never from the
orders' one.

    python bench/generate_orders.py --customers 1000000 --out bench/out/orders_1m.csv
    python bench/generate_orders.py --customers 1000000 --order time \
        --out bench/out/orders_1m_time.csv
    python bench/generate_orders.py --customers 1000000 --order time --buyer-ids \
        --out bench/out/orders_1m_buyers_time.csv --profiles-out bench/out/profiles_1m_buyers.csv
    python bench/generate_orders.py --customers 20000 --buyer-ids --two-channel-share 0.2 \
        --out bench/out/orders_20000_buyers.csv --profiles-out bench/out/profiles_20000_buyers.csv
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
PHONE_WITH_PROFILE = 0.3  # share of one-channel accounts whose profile carries a phone
# Account and phone numbers: n -> (n * MULT + ADD) mod 10**9, a bijection on 0..10**9-1 (MULT is
# prime to 10), so ids are unique per channel and customer yet do not reveal the customer.
ACCOUNT_MULT = np.array([387_420_489, 282_475_249, 214_358_881, 815_730_721, 410_338_673])
ACCOUNT_ADD = np.array([104_729, 611_953, 7_368_787, 15_485_863, 32_452_843])
PHONE_MULT, PHONE_ADD = 591_286_517, 274_961_093
ID_SPACE = 10**9


def _scramble(n: np.ndarray, mult: np.ndarray | int, add: np.ndarray | int) -> np.ndarray:
    return (n.astype(np.int64) * mult + add) % ID_SPACE


def _phone_texts(cust: np.ndarray, style: np.ndarray) -> list[str]:
    """Each customer's mobile number (13 + nine digits) in style 0 (+86 138-0000-2222),
    1 (13800002222) or 2 (138 0000 2222)."""
    out = []
    for num, st in zip((_scramble(cust, PHONE_MULT, PHONE_ADD) + 13 * ID_SPACE).tolist(),
                       style.tolist(), strict=True):
        d = str(num)
        if st == 0:
            out.append(f"+86 {d[:3]}-{d[3:7]}-{d[7:]}")
        elif st == 1:
            out.append(d)
        else:
            out.append(f"{d[:3]} {d[3:7]} {d[7:]}")
    return out


def _second_channels(rng: np.random.Generator, home: np.ndarray) -> np.ndarray:
    """A channel other than ``home`` for each entry, drawn with CHANNEL_P among the others."""
    second = np.empty_like(home)
    for h in range(len(CHANNELS)):
        at = np.flatnonzero(home == h)
        others = np.delete(np.arange(len(CHANNELS)), h)
        p = CHANNEL_P[others] / CHANNEL_P[others].sum()
        second[at] = rng.choice(others, size=at.size, p=p)
    return second


def _accounts(rng: np.random.Generator, owner: np.ndarray, n: int, share: float,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Channel accounts for ``n`` customers whose orders belong to ``owner`` (grouped, 0..n-1).

    Returns each order's channel index, each customer's home and second channel index, and
    whether the customer buys on two channels.
    """
    counts = np.bincount(owner, minlength=n)
    starts = np.cumsum(counts) - counts
    home = rng.choice(len(CHANNELS), size=n, p=CHANNEL_P)
    # A customer with one order cannot buy on two channels: the share is of all customers, drawn
    # among those with two orders or more.
    eligible = np.flatnonzero(counts >= 2)
    two = np.zeros(n, dtype=bool)
    two[rng.choice(eligible, size=min(round(share * n), eligible.size), replace=False)] = True
    second = _second_channels(rng, home)
    second[~two] = -1
    on_second = (rng.random(owner.size) < 0.5) & two[owner]
    on_second[starts] = False  # the first order is on the home channel
    missing = two & (np.bincount(owner, weights=on_second, minlength=n) == 0)
    on_second[(starts + counts - 1)[missing]] = True  # and at least one on the second
    return np.where(on_second, second[owner], home[owner]), home, second, two


def generate(customers: int, out: str, invalid_share: float, seed: int, chunk: int,
             order: str = "customer", *, buyer_ids: bool = False,
             two_channel_share: float = 0.1, profiles_out: str | None = None,
             stats: dict[str, int] | None = None) -> int:
    """Write the CSV to ``out`` and return the number of order rows.

    ``order="time"`` writes the same records as ``"customer"``, sorted by time (ties keep
    their customer order), so the two files hold identical orders. ``buyer_ids`` writes each
    order's channel account (``buyer_id``) instead of ``customer_id``, with
    ``two_channel_share`` of the customers on two channels; ``profiles_out`` (with
    ``buyer_ids``) then receives the accounts' profiles with phones. ``stats``, when given, is
    filled with counts (customers, orders, two-channel customers, accounts, profile rows and
    those with a phone).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if profiles_out is not None and not buyer_ids:
        raise ValueError("profiles_out needs buyer_ids")
    if not 0 <= two_channel_share <= 1:
        raise ValueError(f"two_channel_share must be in [0, 1], not {two_channel_share}")
    rng = np.random.default_rng(seed)
    # The buyer-id draws have their own stream so the orders stay those of the default file.
    rng_accounts = np.random.default_rng([seed, 1])
    rows = 0
    counted = {"customers": customers, "orders": 0, "two_channel_customers": 0, "accounts": 0,
               "profile_rows": 0, "profile_two_channel_rows": 0}
    # For time order every line and its timestamp are held until the end (~0.3 GB for 1M
    # customers); customer order streams chunk by chunk.
    held: list[str] = []
    held_secs: list[np.ndarray] = []
    profiles: list[str] = []
    profile_chan: list[np.ndarray] = []
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        if buyer_ids:
            fh.write("order_id,channel,buyer_id,ordered_at,amount,status\n")
        else:
            fh.write("order_id,customer_id,ordered_at,amount,channel,status\n")
        for first in range(0, customers, chunk):
            n = min(chunk, customers - first)
            owner, days, amount = _customers(rng, n)
            cust = owner + first
            m = cust.size
            secs = (days * DAY_S).astype(np.int64)
            ts = (START + secs.astype("timedelta64[s]")).astype(str)
            chan = rng.choice(CHANNELS, size=m, p=CHANNEL_P)  # drawn in both modes: same stream
            status = rng.choice(STATUSES, size=m, p=STATUS_P)
            oid = np.arange(rows, rows + m)
            bad = rng.random(m) < invalid_share
            lines = []
            if buyer_ids:
                lines = _buyer_lines(oid, cust, ts, amount, bad, status, owner, n, first,
                                     two_channel_share, rng_accounts, counted,
                                     profiles if profiles_out is not None else None,
                                     profile_chan)
            else:
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
    if profiles_out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(profiles_out)), exist_ok=True)
        with open(profiles_out, "w", encoding="utf-8", newline="") as fh:
            fh.write("channel,buyer_id,phone\n")
            if profiles:
                by_channel = np.argsort(np.concatenate(profile_chan), kind="stable")
                fh.writelines([profiles[i] for i in by_channel])
    counted["orders"] = rows
    if stats is not None:
        stats.update(counted)
    return rows


def _buyer_lines(oid: np.ndarray, cust: np.ndarray, ts: np.ndarray, amount: np.ndarray,
                 bad: np.ndarray, status: np.ndarray, owner: np.ndarray, n: int, first: int,
                 share: float, rng: np.random.Generator, counted: dict[str, int],
                 profiles: list[str] | None, profile_chan: list[np.ndarray]) -> list[str]:
    """One chunk's order lines in buyer-id form (and its profile lines, when collected)."""
    acct, home, second, two = _accounts(rng, owner, n, share)
    number = _scramble(cust, ACCOUNT_MULT[acct], ACCOUNT_ADD[acct])
    names = CHANNELS[acct]
    amt = np.where(bad, "-1.00", np.char.mod("%.2f", amount))
    lines = [f"O{o},{c},{c}-{b},{t}+08:00,{a},{st}\n" for o, c, b, t, a, st in zip(
        oid.tolist(), names.tolist(), number.tolist(), ts.tolist(), amt.tolist(),
        status.tolist(), strict=True)]
    k = int(two.sum())
    counted["two_channel_customers"] += k
    counted["accounts"] += n + k
    # Draw the profiles' randomness whether or not they are written, so --profiles-out does not
    # change the orders file.
    c2 = np.flatnonzero(two) + first
    intl_on_home = rng.random(k) < 0.5
    other_style = np.where(rng.random(k) < 0.5, 1, 2)
    with_phone = ~two & (rng.random(n) < PHONE_WITH_PROFILE)
    c1 = np.flatnonzero(with_phone) + first
    style1 = rng.integers(0, 3, size=c1.size)
    if profiles is None:
        return lines
    h2, s2 = home[two], second[two]
    h1 = home[with_phone]
    chans = np.concatenate([h2, s2, h1])
    custs = np.concatenate([c2, c2, c1])
    styles = np.concatenate([np.where(intl_on_home, 0, other_style),
                             np.where(intl_on_home, other_style, 0), style1])
    number = _scramble(custs, ACCOUNT_MULT[chans], ACCOUNT_ADD[chans])
    phones = _phone_texts(custs, styles)
    profiles.extend(f"{c},{c}-{b},{ph}\n" for c, b, ph in zip(
        CHANNELS[chans].tolist(), number.tolist(), phones, strict=True))
    profile_chan.append(chans)
    counted["profile_rows"] += chans.size
    counted["profile_two_channel_rows"] += 2 * k
    return lines


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
    p.add_argument("--buyer-ids", action="store_true",
                   help="write each order's channel account (channel,buyer_id) instead of "
                        "customer_id")
    p.add_argument("--two-channel-share", type=float, default=0.1,
                   help="with --buyer-ids: share of customers buying on two channels "
                        "(default 0.1)")
    p.add_argument("--profiles-out", metavar="PATH",
                   help="with --buyer-ids: also write the accounts' profiles "
                        "(channel,buyer_id,phone) to PATH")
    a = p.parse_args()
    if a.profiles_out and not a.buyer_ids:
        p.error("--profiles-out needs --buyer-ids")
    if not 0 <= a.two_channel_share <= 1:
        p.error("--two-channel-share must be between 0 and 1")
    stats: dict[str, int] = {}
    rows = generate(a.customers, a.out, a.invalid_share, a.seed, a.chunk, a.order,
                    buyer_ids=a.buyer_ids, two_channel_share=a.two_channel_share,
                    profiles_out=a.profiles_out, stats=stats)
    size = os.path.getsize(a.out)
    print(f"wrote {rows} orders for {a.customers} customers to {a.out} ({size / 1e6:.1f} MB, "
          f"{a.order} order)")
    if a.buyer_ids:
        print(f"{stats['accounts']} channel accounts; {stats['two_channel_customers']} customers "
              f"on two channels")
    if a.profiles_out:
        print(f"wrote {stats['profile_rows']} profiles to {a.profiles_out} "
              f"({stats['profile_two_channel_rows']} of two-channel customers)")


if __name__ == "__main__":
    main()
