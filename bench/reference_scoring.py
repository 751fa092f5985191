"""The reference for the scoring-run benchmark: a pandas + lifetimes script.

What a data team would write without the service: read the order log, keep paid orders up to
the cut-off, summarise per customer with lifetimes' ``summary_data_from_transaction_data``
(purchase occasions per day), fit BG/NBD and Gamma-Gamma, and compute P(alive), expected
purchases over 30/90/365 days and 12-month CLV. It does less than a run: no database, no
backtest, no Pareto/NBD, nothing persisted. Prints one JSON line: seconds, customers, peak RSS.

    python bench/reference_scoring.py bench/out/orders_1m.csv 2024-12-31
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings


def main() -> None:
    """Entry point: ``reference_scoring.py CSV AS_OF``."""
    path, as_of = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    warnings.simplefilter("ignore")
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    orders = pd.read_csv(path, usecols=["customer_id", "ordered_at", "amount", "status"])
    orders = orders[orders["status"] == "paid"]
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"], utc=True, errors="coerce")
    orders["amount"] = pd.to_numeric(orders["amount"], errors="coerce")
    orders = orders[(orders["amount"] >= 0) & orders["ordered_at"].notna()]
    orders["day"] = orders["ordered_at"].dt.tz_localize(None).dt.normalize()
    orders = orders[orders["day"] <= pd.Timestamp(as_of)]
    rfm = summary_data_from_transaction_data(orders, "customer_id", "day", "amount",
                                             observation_period_end=as_of, freq="D")
    bg = BetaGeoFitter().fit(rfm["frequency"], rfm["recency"], rfm["T"])
    rfm["p_alive"] = bg.conditional_probability_alive(rfm["frequency"], rfm["recency"],
                                                      rfm["T"])
    for h in (30, 90, 365):
        rfm[f"e{h}"] = bg.conditional_expected_number_of_purchases_up_to_time(
            h, rfm["frequency"], rfm["recency"], rfm["T"])
    repeat = rfm[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
    gg = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
    rfm["clv"] = gg.customer_lifetime_value(bg, rfm["frequency"], rfm["recency"], rfm["T"],
                                            rfm["monetary_value"], time=12, freq="D",
                                            discount_rate=0.01)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t0, "customers": len(rfm),
                      "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
