"""Are the forecasts honest? Holdout MAE of the three purchase models and calibration of the
80% intervals, on the full CDNOW data (issue 19, points 1 and 4).

Data: ``CDNOW_master.txt`` (shipped with lifetimes: 23,570 customers who first bought in
Q1 1997, purchases to 1998-06-30). Purchase occasions are calendar days (amounts summed per day,
DESIGN.md §2). Calibration to 1997-09-30, the following 273 days held out.

1. Holdout MAE of E[Y(273) | calibration history] for BG/NBD, MBG/NBD and Pareto/NBD, ours and
   lifetimes' in the same run.
2. For each model: coverage of the central 80% interval (10th to 90th percentile, endpoints
   included) of holdout purchases and of holdout spend (Gamma-Gamma fitted on the calibration
   repeat buyers), overall and by calibration frequency (0, 1, 2, 3-6, 7+), and the randomized
   PIT histogram in ten bins (Czado, Gneiting & Held 2009: for a count y, a uniform draw between
   F(y-1) and F(y); for spend, F(y) where y > 0 and a draw in [0, F(0)] at the mass at 0).
3. The reference: lifetimes' Pareto/NBD with its conditional P(X(t) = k)
   (``conditional_probability_of_n_purchases_up_to_time``), the same way.
4. Parameter uncertainty: the selected model's predictive distribution averaged over 200 draws
   of the log-parameters from their asymptotic normal (the fit's inverse Hessian), with the
   Gamma-Gamma parameters drawn the same way; what it changes in coverage and PIT.

    python bench/forecast_calibration.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402
from models import forecast  # noqa: E402
from models.beta_geo import BetaGeoModel  # noqa: E402
from models.gamma_gamma import GammaGammaModel  # noqa: E402
from models.modified_beta_geo import ModifiedBetaGeoModel  # noqa: E402
from models.pareto_nbd import ParetoNBDModel  # noqa: E402
from models.rfm import compress_with_index  # noqa: E402

CAL_END = pd.Timestamp("1997-09-30")
HOLDOUT_END = pd.Timestamp("1998-06-30")
GROUPS = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3-6", 3, 6), ("7+", 7, 10**9))
MODELS = {"bgnbd": BetaGeoModel, "mbgnbd": ModifiedBetaGeoModel, "pareto_nbd": ParetoNBDModel}


@lru_cache(maxsize=4)  # main and each model's recalibration read the same two splits
def load(cal_end: pd.Timestamp = CAL_END, holdout_end: pd.Timestamp = HOLDOUT_END
         ) -> dict[str, np.ndarray]:
    """Calibration RFM, repeat-occasion mean, and holdout purchases and spend per customer."""
    path = Path(str(resources.files("lifetimes") / "datasets" / "CDNOW_master.txt"))
    tx = pd.read_csv(path, sep=r"\s+", header=0, names=["cid", "date", "qty", "amount"])
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    occ = tx.groupby(["cid", "date"], as_index=False)["amount"].sum().sort_values(["cid", "date"])
    cal, hold = occ[occ["date"] <= cal_end], occ[(occ["date"] > cal_end)
                                                 & (occ["date"] <= holdout_end)]
    g = cal.groupby("cid")
    first, last, n = g["date"].min(), g["date"].max(), g.size()
    cal = cal.assign(k=g.cumcount())
    repeat_mean = cal[cal["k"] > 0].groupby("cid")["amount"].mean()
    ids = first.index
    return {
        "frequency": (n - 1).to_numpy(dtype=float),
        "recency": (last - first).dt.days.to_numpy(dtype=float),
        "T": (cal_end - first).dt.days.to_numpy(dtype=float),
        "monetary": repeat_mean.reindex(ids).fillna(0.0).to_numpy(),
        "y": hold.groupby("cid").size().reindex(ids).fillna(0).to_numpy(dtype=float),
        "spend": hold.groupby("cid")["amount"].sum().reindex(ids).fillna(0.0).to_numpy(),
    }


def pit_bins(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shares of randomized PIT values u ~ U(lo, hi) in ten equal bins."""
    u = lo + rng.random(lo.size) * (hi - lo)
    return np.histogram(np.clip(u, 0, 1), bins=10, range=(0, 1))[0] / lo.size


def coverage_table(covered: np.ndarray, x: np.ndarray) -> dict[str, float]:
    out = {"all": float(covered.mean())}
    for name, a, b in GROUPS:
        sel = (x >= a) & (x <= b)
        out[name] = float(covered[sel].mean())
    return out


def evaluate_cdfs(f_below: np.ndarray, f_at: np.ndarray, s_zero: np.ndarray,
                  s_at: np.ndarray, d: dict[str, np.ndarray], rng: np.random.Generator
                  ) -> dict[str, object]:
    """Coverage and PIT from each customer's CDF at their actual values.

    Purchases: y lies in [Q10, Q90] iff F(y) >= 0.1 and F(y-1) < 0.9 (Q the smallest k with
    F(k) >= level). Spend: 0 is covered iff P(S = 0) >= 0.1 (then Q10 = 0); y > 0 iff
    0.1 <= F(y) <= 0.9 (continuous there).
    """
    x, s = d["frequency"], d["spend"]
    tol = 1e-12
    cov_p = (f_at >= 0.1 - tol) & (f_below < 0.9 - tol)
    cov_s = np.where(s > 0, (s_at >= 0.1 - tol) & (s_at <= 0.9 + tol), s_zero >= 0.1 - tol)
    return {
        "purchases": coverage_table(cov_p, x), "spend": coverage_table(cov_s, x),
        "pit_purchases": pit_bins(f_below, f_at, rng),
        "pit_spend": pit_bins(np.where(s > 0, s_at, 0.0), np.where(s > 0, s_at, s_zero), rng),
    }


def ours(model, gg: GammaGammaModel, d: dict[str, np.ndarray], t: float,
         rng: np.random.Generator) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Coverage and PIT of our intervals, and the intervals themselves."""
    hist, index = compress_with_index(d["frequency"], d["recency"], d["T"])
    dist = forecast.purchase_distribution(model, t, hist.frequency, hist.recency, hist.T)
    y = d["y"]
    cust = dist.take(index)  # each customer's own histogram row
    f_below, f_at, s_zero = cust.cdf(y - 1), cust.cdf(y), cust.cdf(np.zeros_like(y))
    p, q, gamma = (gg.params_[k] for k in ("p", "q", "v"))
    scale = gamma + d["frequency"] * d["monetary"]
    s_at = forecast.spend_cdf(cust, p, q, d["spend"] / scale)
    bounds = dist.quantiles()[index]
    factor = forecast.spend_factor_quantiles(dist, p, q)[index]
    result = evaluate_cdfs(f_below, f_at, s_zero, s_at, d, rng)
    # What the model itself expects the intervals to hold (discrete: at least 80%).
    result["implied"] = float(np.mean(cust.cdf(bounds[:, 1]) - cust.cdf(bounds[:, 0] - 1)))
    # The stored intervals must say the same as the CDF test above.
    direct = (y >= bounds[:, 0]) & (y <= bounds[:, 1])
    assert abs(direct.mean() - result["purchases"]["all"]) < 1e-9, "interval/CDF mismatch"
    return result, {"low": bounds[:, 0], "high": bounds[:, 1],
                    "spend_low": factor[:, 0] * scale, "spend_high": factor[:, 1] * scale}


def lifetimes_reference(d: dict[str, np.ndarray], t: float,
                        rng: np.random.Generator) -> dict[str, object] | None:
    """lifetimes' Pareto/NBD and its conditional pmf: coverage and PIT of purchases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import ParetoNBDFitter
        ref = ParetoNBDFitter().fit(d["frequency"], d["recency"], d["T"])
        hist, index = compress_with_index(d["frequency"], d["recency"], d["T"])
        k_max = int(d["y"].max()) + 1
        pmf = np.empty((hist.frequency.size, k_max + 1))
        for k in range(k_max + 1):
            with np.errstate(all="ignore"):
                pmf[:, k] = ref.conditional_probability_of_n_purchases_up_to_time(
                    k, t, hist.frequency, hist.recency, hist.T)
    bad = ~np.all(np.isfinite(pmf), axis=1)
    cdf = np.cumsum(np.nan_to_num(pmf), axis=1)[index]
    y = d["y"].astype(int)
    rows = np.arange(y.size)
    f_at = cdf[rows, y]
    f_below = np.where(y > 0, cdf[rows, np.maximum(y - 1, 0)], 0.0)
    cov = (f_at >= 0.1 - 1e-12) & (f_below < 0.9 - 1e-12)
    return {"purchases": coverage_table(cov, d["frequency"]),
            "pit_purchases": pit_bins(f_below, f_at, rng),
            "non_finite_rows": int(bad.sum()), "params": dict(ref.params_)}


def with_parameter_uncertainty(cls, model, gg: GammaGammaModel, d: dict[str, np.ndarray],
                               t: float, draws: int, rng: np.random.Generator
                               ) -> dict[str, object]:
    """CDFs averaged over parameter draws from the fits' asymptotic normal (log scale)."""
    hist, index = compress_with_index(d["frequency"], d["recency"], d["T"])
    mean = np.log([model.params_[k] for k in cls.param_names])
    cov = model.log_covariance_
    gmean = np.log([gg.params_[k] for k in ("p", "q", "v")])
    gcov = gg.log_covariance_
    y = d["y"]
    acc = [np.zeros(y.size) for _ in range(4)]
    for _ in range(draws):
        params = dict(zip(cls.param_names, np.exp(rng.multivariate_normal(mean, cov)),
                          strict=True))
        p, q, gamma = np.exp(rng.multivariate_normal(gmean, gcov))
        m = cls.from_params(params)
        dist = forecast.purchase_distribution(m, t, hist.frequency, hist.recency, hist.T)
        scale = gamma + d["frequency"] * d["monetary"]
        cust = dist.take(index)
        acc[0] += cust.cdf(y - 1)
        acc[1] += cust.cdf(y)
        acc[2] += cust.cdf(np.zeros_like(y))
        acc[3] += forecast.spend_cdf(cust, p, q, d["spend"] / scale)
    f_below, f_at, s_zero, s_at = (a / draws for a in acc)
    return evaluate_cdfs(f_below, f_at, s_zero, s_at, d, rng)


def recalibration(cls, rng: np.random.Generator) -> dict[str, object]:
    """The service's recalibration (``models.forecast.recalibrate``), judged out of sample.

    A run as of 1997-09-30 holds out the last quarter of its history in its backtest: fit on
    the rest, learn the interval levels from the held-out purchases' randomized PIT, exactly
    as ``crm_service.scoring.pipeline`` does; then the fit on all data to 1997-09-30 is judged
    at those levels on the real 273 days that follow, for purchases and for spend (which uses
    the purchases' levels, as the service does).
    """
    first_day = pd.Timestamp("1997-01-01")
    span = (CAL_END - first_day).days
    bt_end = CAL_END - pd.Timedelta(days=int(span * 0.25))
    b = load(bt_end, CAL_END)
    hold = float((CAL_END - bt_end).days)
    model_b = cls().fit(b["frequency"], b["recency"], b["T"])
    rc = forecast.recalibrate(model_b, hold, b["frequency"], b["recency"], b["T"], b["y"],
                              seed=CAL_END.toordinal())
    levels = rc.levels
    d = load()
    model = cls().fit(d["frequency"], d["recency"], d["T"])
    repeat = (d["frequency"] > 0) & (d["monetary"] > 0)
    gg = GammaGammaModel().fit(d["frequency"][repeat], d["monetary"][repeat])
    hist, index = compress_with_index(d["frequency"], d["recency"], d["T"])
    dist = forecast.purchase_distribution(model, 273.0, hist.frequency, hist.recency, hist.T)
    cust = dist.take(index)
    y = d["y"]
    lo, hi = dist.quantiles(levels)[index].T
    p, q, gamma = (gg.params_[k] for k in ("p", "q", "v"))
    scale = gamma + d["frequency"] * d["monetary"]
    f = forecast.spend_factor_quantiles(dist, p, q, levels)[index]
    cov_s = (d["spend"] >= f[:, 0] * scale - 1e-9) & (d["spend"] <= f[:, 1] * scale + 1e-9)
    # PIT of the recalibrated CDF R(F): R maps a PIT value to its rank among the backtest's
    bt_hist, bt_index = compress_with_index(b["frequency"], b["recency"], b["T"])
    bt = forecast.purchase_distribution(model_b, hold, bt_hist.frequency, bt_hist.recency,
                                        bt_hist.T).take(bt_index)
    u_bt = bt.cdf(b["y"] - 1) + rng.random(b["y"].size) * (bt.cdf(b["y"]) - bt.cdf(b["y"] - 1))
    fb, fa = cust.cdf(y - 1), cust.cdf(y)
    u_test = fb + rng.random(y.size) * (fa - fb)
    s_at = forecast.spend_cdf(cust, p, q, d["spend"] / scale)
    us_test = np.where(d["spend"] > 0, s_at, rng.random(y.size) * cust.cdf(np.zeros_like(y)))

    def recal(values: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(u_bt), values, side="right") / u_bt.size

    return {"backtest_end": bt_end.date().isoformat(), "holdout_days": hold, "levels": levels,
            "backtest_pit": rc.pit, "purchases": coverage_table((y >= lo) & (y <= hi),
                                                               d["frequency"]),
            "spend": coverage_table(cov_s, d["frequency"]),
            "pit_purchases": np.histogram(recal(u_test), bins=10, range=(0, 1))[0] / y.size,
            "pit_spend": np.histogram(recal(us_test), bins=10, range=(0, 1))[0] / y.size}


def fmt_cov(c: dict[str, float]) -> str:
    return " | ".join(f"{100 * c[k]:.1f}%" for k in ("all", *(g[0] for g in GROUPS)))


def fmt_pit(b: np.ndarray) -> str:
    return " | ".join(f"{100 * v:.1f}" for v in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=200, help="parameter draws (0: skip)")
    ap.add_argument("--skip-lifetimes", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(19)
    print(f"# {machine()}, {time.strftime('%Y-%m-%d')}")
    d = load()
    t = float((HOLDOUT_END - CAL_END).days)
    print(f"customers {d['frequency'].size}, holdout {t:.0f} days, holdout purchases "
          f"{d['y'].sum():.0f}, holdout spend {d['spend'].sum():,.0f}")
    hist, _ = compress_with_index(d["frequency"], d["recency"], d["T"])
    repeat = (d["frequency"] > 0) & (d["monetary"] > 0)  # as the service fits it
    gg = GammaGammaModel().fit(d["frequency"][repeat], d["monetary"][repeat])
    print("Gamma-Gamma", {k: round(v, 4) for k, v in gg.params_.items()})
    fitted, mae = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
        refs = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter,
                "pareto_nbd": ParetoNBDFitter}
        print("\n| model | holdout MAE, crm-service | holdout MAE, lifetimes (same run) |"
              " fit s (ours / lifetimes) |")
        print("|---|---|---|---|")
        for name, cls in MODELS.items():
            t0 = time.perf_counter()
            fitted[name] = cls().fit(hist)
            t1 = time.perf_counter()
            e = fitted[name].conditional_expected_purchases(t, d["frequency"], d["recency"],
                                                            d["T"])
            mae[name] = float(np.mean(np.abs(e - d["y"])))
            t2 = time.perf_counter()
            ref = refs[name]().fit(d["frequency"], d["recency"], d["T"])
            t3 = time.perf_counter()
            er = ref.conditional_expected_number_of_purchases_up_to_time(
                t, d["frequency"], d["recency"], d["T"])
            print(f"| {cls.label} | {mae[name]:.4f} | {float(np.mean(np.abs(er - d['y']))):.4f}"
                  f" | {t1 - t0:.2f} / {t3 - t2:.2f} |")
    selected = min(mae, key=mae.get)
    print(f"\nselected by holdout MAE: {MODELS[selected].label}")
    header = "| all | " + " | ".join(f"x = {g[0]}" for g in GROUPS) + " |"
    print("\nCoverage of the central 80% interval (actual in [P10, P90])\n")
    print("| model | what " + header + " model-implied |")
    print("|---|---|" + "---|" * (len(GROUPS) + 2))
    results = {}
    for name, cls in MODELS.items():
        results[name], intervals = ours(fitted[name], gg, d, t, rng)
        print(f"| {cls.label} | purchases | {fmt_cov(results[name]['purchases'])} | "
              f"{100 * results[name]['implied']:.1f}% |")
        print(f"| {cls.label} | spend | {fmt_cov(results[name]['spend'])} | |")
        if name == selected:
            chosen = intervals
    ref = None
    if not args.skip_lifetimes:
        t0 = time.perf_counter()
        ref = lifetimes_reference(d, t, rng)
        print(f"| lifetimes Pareto/NBD (reference, {time.perf_counter() - t0:.0f} s, "
              f"{ref['non_finite_rows']} rows non-finite) | purchases | "
              f"{fmt_cov(ref['purchases'])} |")
    print("\nRandomized PIT, share of customers per tenth (%; 10 each if calibrated)\n")
    print("| model | what | " + " | ".join(f"{k / 10:.1f}-" for k in range(10)) + " |")
    print("|---|---|" + "---|" * 10)
    for name, cls in MODELS.items():
        print(f"| {cls.label} | purchases | {fmt_pit(results[name]['pit_purchases'])} |")
        print(f"| {cls.label} | spend | {fmt_pit(results[name]['pit_spend'])} |")
    if ref is not None:
        print(f"| lifetimes Pareto/NBD | purchases | {fmt_pit(ref['pit_purchases'])} |")
    lo, hi = chosen["low"], chosen["high"]
    print(f"\n{MODELS[selected].label} intervals: purchases width median "
          f"{np.median(hi - lo):.0f}, mean {np.mean(hi - lo):.2f}; share [0, 0] "
          f"{np.mean(hi == 0):.1%}; spend width median "
          f"{np.median(chosen['spend_high'] - chosen['spend_low']):.2f}")
    print("\nRecalibrated on each model's own backtest (levels learned before 1997-09-30, "
          "judged on the 273 days after):")
    print("| model | levels (both) | what " + header + " PIT (10 bins) |")
    print("|---|---|---|---|" + "---|" * len(GROUPS) + "---|")
    for cls in MODELS.values():
        rc = recalibration(cls, rng)
        lv = rc["levels"]
        levels = f"{lv[0]:.3f}–{lv[1]:.3f}"
        print(f"| {cls.label} | {levels} | purchases | {fmt_cov(rc['purchases'])} | "
              f"{fmt_pit(rc['pit_purchases'])} |")
        print(f"| {cls.label} | | spend | {fmt_cov(rc['spend'])} | {fmt_pit(rc['pit_spend'])} |")
    if args.draws:
        cls = MODELS[selected]
        t0 = time.perf_counter()
        pu = with_parameter_uncertainty(cls, fitted[selected], gg, d, t, args.draws, rng)
        print(f"\nWith parameter uncertainty ({args.draws} draws, {time.perf_counter() - t0:.0f}"
              f" s), {cls.label}:")
        print(f"| purchases coverage | {fmt_cov(pu['purchases'])} |")
        print(f"| spend coverage | {fmt_cov(pu['spend'])} |")
        print(f"| PIT purchases | {fmt_pit(pu['pit_purchases'])} |")
        print(f"| PIT spend | {fmt_pit(pu['pit_spend'])} |")


if __name__ == "__main__":
    main()
