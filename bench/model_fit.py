"""Benchmark: BG/NBD and Pareto/NBD fits on synthetic customers, against lifetimes.

Customers are simulated from a BG/NBD process in whole days (first purchases spread over three
years), so the data look like what the service's SQL summary produces. The fit time includes
compressing the customers into the histogram of unique (x, t_x, T) rows. lifetimes fits the same
arrays without compression, in the same run.

    python bench/model_fit.py --customers 1000000
    python bench/model_fit.py --customers 10000000 --skip-lifetimes
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from models.beta_geo import BetaGeoModel  # noqa: E402
from models.pareto_nbd import ParetoNBDModel  # noqa: E402
from models.rfm import compress  # noqa: E402

TRUE = {"r": 0.25, "alpha": 30.0, "a": 0.8, "b": 2.5}


def simulate(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD customers: (frequency, recency, T) in whole days."""
    rng = np.random.default_rng(seed)
    big_t = rng.integers(1, 3 * 365, size=n).astype(float)
    lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha"], size=n)
    p = rng.beta(TRUE["a"], TRUE["b"], size=n)
    arrivals = rng.poisson(lam * big_t)            # purchases the customer would make in T
    lifetime = rng.geometric(p)                    # repeat purchases until dropout
    x = np.minimum(arrivals, lifetime)
    # The x-th of n uniform arrival times on [0, T] is T * Beta(x, n - x + 1).
    t_x = np.where(x > 0, big_t * rng.beta(np.maximum(x, 1), arrivals - x + 1), 0.0)
    t_x = np.minimum(np.floor(t_x), big_t)
    t_x = np.where(x > 0, t_x, 0.0)
    x = np.where((x > 0) & (t_x == 0), 0, x)       # same-day repeats are one occasion
    return x.astype(float), t_x, big_t


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description="model fit benchmark")
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--skip-lifetimes", action="store_true")
    ap.add_argument("--skip-pareto", action="store_true")
    a = ap.parse_args()
    x, t_x, big_t = simulate(a.customers)
    print(f"machine: {machine()}")
    print(f"customers: {a.customers:,}; repeat buyers: {int((x > 0).sum()):,}")
    hist, t_c = timed(lambda: compress(x, t_x, big_t))
    print(f"compression: {t_c:.2f} s -> {hist.frequency.size:,} unique rows")
    bg, t_bg = timed(lambda: BetaGeoModel().fit(compress(x, t_x, big_t)))
    print(f"| BG/NBD, crm-service (incl. compression) | {t_bg:.2f} s | "
          + ", ".join(f"{k}={v:.4g}" for k, v in bg.params_.items()) + " |")
    if not a.skip_pareto:
        pn, t_pn = timed(lambda: ParetoNBDModel().fit(compress(x, t_x, big_t)))
        print(f"| Pareto/NBD, crm-service (incl. compression) | {t_pn:.2f} s | "
              + ", ".join(f"{k}={v:.4g}" for k, v in pn.params_.items()) + " |")
    if not a.skip_lifetimes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lifetimes import BetaGeoFitter

            lt, t_lt = timed(lambda: BetaGeoFitter().fit(x, t_x, big_t))
        print(f"| BG/NBD, lifetimes 0.11.3 (no compression) | {t_lt:.2f} s | "
              + ", ".join(f"{k}={v:.4g}" for k, v in lt.params_.items()) + " |")
        print(f"speed-up over lifetimes: {t_lt / t_bg:.1f}x")


if __name__ == "__main__":
    main()
