"""Benchmark: importing marketplace buyer ids and resolving them into customers (1M customers).

A marketplace export names the buyer by their account on that channel (``channel,buyer_id``), not
by a CRM customer id, and one person may have an account on two channels. This measures what
that costs, with child processes against fresh embedded PostgreSQL servers, wall time and the
child's peak RSS for each step, ``--runs`` times (default 2):

1. ``crm-service import orders`` of the customer-id file (``bench/out/orders_1m_time.csv``) into
   an empty database;
2. the same import of the buyer-id file (``bench/out/orders_1m_buyers_time.csv``: the very same
   orders, 10% of the customers buying on two channels) into another empty database, and the
   ratio of the two walls (goal: at most 1.20);
3. on that database, ``crm-service import customers`` of the channels' profiles
   (``bench/out/profiles_1m_buyers.csv``: ``channel,buyer_id,phone``, the two accounts of a
   two-channel customer sharing a phone written differently);
4. ``crm-service identities resolve --json`` (goal: at most 60 s), whose JSON is printed next to
   what the files imply (the accounts sharing a phone).

Both order files are time-ordered, as a marketplace export is. Files missing under bench/out/
are generated first (bench/generate_orders.py, seed 42); ``--customers`` scales down and then
uses files named with the count. Prints Markdown rows for BENCHMARKS.md, the machine and the
command. The databases are stopped and deleted on exit.

    python bench/identity_resolution.py              # 1M customers, 2 runs
    python bench/identity_resolution.py --customers 20000 --runs 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, machine  # noqa: E402
from bench.generate_orders import generate  # noqa: E402

SEED, CHUNK, INVALID_SHARE, TWO_CHANNEL_SHARE = 42, 100_000, 0.001, 0.1
RATIO_GOAL, RESOLVE_GOAL_S = 1.20, 60.0


def files(customers: int) -> tuple[Path, Path, Path]:
    """The customer-id orders, buyer-id orders and profiles files for ``customers``."""
    size = "1m" if customers == 1_000_000 else str(customers)
    out = Path("bench/out")
    return (out / f"orders_{size}_time.csv", out / f"orders_{size}_buyers_time.csv",
            out / f"profiles_{size}_buyers.csv")


def ensure_files(customers: int) -> tuple[Path, Path, Path]:
    """Generate whichever of the three files is missing; return their paths."""
    by_customer, by_buyer, profiles = files(customers)
    if not by_customer.exists():
        t0 = time.perf_counter()
        generate(customers, str(by_customer), INVALID_SHARE, SEED, CHUNK, "time")
        print(f"generated {by_customer} in {time.perf_counter() - t0:.1f} s", flush=True)
    if not (by_buyer.exists() and profiles.exists()):
        t0 = time.perf_counter()
        generate(customers, str(by_buyer), INVALID_SHARE, SEED, CHUNK, "time", buyer_ids=True,
                 two_channel_share=TWO_CHANNEL_SHARE, profiles_out=str(profiles))
        print(f"generated {by_buyer} and {profiles} in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return by_customer, by_buyer, profiles


def expected_links(profiles: Path) -> dict[str, int]:
    """What the profiles imply: accounts with a phone, and phones shared by two accounts.

    A phone is compared by its national digits (``+86 138-0000-2222`` = ``13800002222``); the
    generator gives every customer their own number, so a shared phone is one person.
    """
    by_phone: Counter[str] = Counter()
    rows = 0
    with profiles.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            rows += 1
            digits = re.sub(r"\D", "", row["phone"])
            if len(digits) == 13 and digits.startswith("86"):
                digits = digits[2:]
            by_phone[digits] += 1
    shared = sum(1 for n in by_phone.values() if n == 2)
    return {"profile_rows": rows, "phones": len(by_phone), "phones_on_two_accounts": shared,
            "accounts_to_link": 2 * shared, "expected_merges": shared}


def run_cli(args: list[str], dsn: str, data_dir: Path,
            extra_env: dict[str, str] | None = None) -> tuple[float, float, dict]:
    """Run ``python -m crm_service ARGS`` as a child; return wall s, its peak RSS MB, its JSON.

    stderr goes to a file in ``data_dir`` and its tail is shown if the command fails.
    """
    # A Chinese brand: national numbers are read as +86 (the profiles write both forms).
    env = dict(os.environ, DATABASE_URL=dsn, CRM_DATA_DIR=str(data_dir),
               CRM_PHONE_COUNTRY_CODE="86", **(extra_env or {}))
    cmd = [sys.executable, "-m", "crm_service", *args]
    err_path = data_dir / f"stderr-{args[0]}-{args[1] if len(args) > 1 else ''}.txt"
    with err_path.open("w+", encoding="utf-8") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        # wait4 gives this child's own rusage, not the max over every child so far.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code:
            err.seek(0)
            tail = "".join(err.readlines()[-20:])
            sys.exit(f"{shlex.join(cmd)} failed with exit code {code}\n"
                     f"stdout: {out[-2000:]}\nstderr (tail):\n{tail}")
    try:
        parsed = json.loads(out)
    except json.JSONDecodeError:
        sys.exit(f"{shlex.join(cmd)} printed no JSON: {out[-2000:]!r}")
    return wall, usage.ru_maxrss / 1024, parsed


def import_orders(csv_path: Path) -> tuple[str, Path, float, float, dict]:
    """Import ``csv_path`` into a fresh database; return its dsn and dir, wall, RSS, counts."""
    dsn, data_dir = fresh_database()
    wall, rss, counts = run_cli(["import", "orders", str(csv_path), "--json", "--report",
                                 str(data_dir / "order-rejects.csv")], dsn, data_dir)
    return dsn, data_dir, wall, rss, counts


def one_run(run: int, by_customer: Path, by_buyer: Path, profiles: Path,
            expected: dict[str, int]) -> list[str]:
    """Measure every step once; return the run's table rows."""
    tag = f"(run {run})"
    _, _, wall_c, rss_c, counts_c = import_orders(by_customer)
    print(json.dumps({"run": run, "step": "import orders customer_id", "file": str(by_customer),
                      "wall_s": round(wall_c, 2), **counts_c}), flush=True)
    dsn, data_dir, wall_b, rss_b, counts_b = import_orders(by_buyer)
    print(json.dumps({"run": run, "step": "import orders buyer_id", "file": str(by_buyer),
                      "wall_s": round(wall_b, 2), **counts_b}), flush=True)
    if counts_b.get("rows") != counts_c.get("rows"):
        print(f"note: the two files have different row counts ({counts_c.get('rows')} and "
              f"{counts_b.get('rows')}); they should hold the same orders", flush=True)
    ratio = wall_b / wall_c
    # The profiles load with the rules off, so that `identities resolve` does all the linking
    # (with them on, the import links as it loads and resolve finds nothing left to do).
    wall_p, rss_p, counts_p = run_cli(["import", "customers", str(profiles), "--json",
                                       "--report", str(data_dir / "profile-rejects.csv")],
                                      dsn, data_dir, {"CRM_LINK_RULES": "none"})
    print(json.dumps({"run": run, "step": "import customers profiles", "file": str(profiles),
                      "wall_s": round(wall_p, 2), **counts_p}), flush=True)
    wall_r, rss_r, resolved = run_cli(["identities", "resolve", "--json"], dsn, data_dir)
    print(json.dumps({"run": run, "step": "identities resolve", "wall_s": round(wall_r, 2),
                      "output": resolved, "expected_from_files": expected}), flush=True)
    wall_2, rss_2, again = run_cli(["identities", "resolve", "--json"], dsn, data_dir)
    print(json.dumps({"run": run, "step": "identities resolve again", "wall_s": round(wall_2, 2),
                      "output": again}), flush=True)
    rows_c, rows_b, rows_p = (counts_c.get("rows", 0), counts_b.get("rows", 0),
                              counts_p.get("rows", 0))
    return [
        f"| `import orders`, customer_id, time-ordered, empty database {tag} | {wall_c:.1f} | "
        f"{rows_c / wall_c:,.0f} | {rss_c:.0f} |",
        f"| `import orders`, channel + buyer_id, time-ordered, empty database {tag} | "
        f"{wall_b:.1f} | {rows_b / wall_b:,.0f} | {rss_b:.0f} |",
        f"| ratio buyer_id / customer_id, goal ≤ {RATIO_GOAL:.2f} {tag} | **{ratio:.2f}** | | |",
        f"| `import customers`, channel + buyer_id + phone profiles {tag} | {wall_p:.1f} | "
        f"{rows_p / wall_p:,.0f} | {rss_p:.0f} |",
        f"| `identities resolve`, {expected['expected_merges']:,} two-channel customers "
        f"expected, goal ≤ {RESOLVE_GOAL_S:.0f} s {tag} | **{wall_r:.1f}** | - | {rss_r:.0f} |",
        f"| `identities resolve` again (nothing left to link) {tag} | {wall_2:.1f} | - | "
        f"{rss_2:.0f} |",
    ]


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description="identity resolution benchmark")
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=2)
    a = p.parse_args()
    command = shlex.join(["python", "bench/identity_resolution.py", *sys.argv[1:]])
    by_customer, by_buyer, profiles = ensure_files(a.customers)
    expected = expected_links(profiles)
    print(f"machine: {machine()}")
    for path in (by_customer, by_buyer, profiles):
        print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"profiles imply: {json.dumps(expected)}", flush=True)
    table = ["| what | wall s | rows/s | peak RSS MB |", "|---|---|---|---|"]
    for run in range(1, a.runs + 1):
        table += one_run(run, by_customer, by_buyer, profiles, expected)
    print(f"command: {command}")
    print(f"machine: {machine()}")
    print("\n".join(table))


if __name__ == "__main__":
    main()
