"""The CDNOW sample (shipped with lifetimes) as calibration-period RFM arrays.

Purchase occasions are calendar days (DESIGN.md §2); the calibration period ends 1997-09-30, as
in Fader, Hardie & Lee (2005).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from crm_service.platform.demo import cdnow_sample_path

CALIBRATION_END = pd.Timestamp("1997-09-30")


@lru_cache(maxsize=1)
def cdnow_rfm() -> dict[str, np.ndarray]:
    """frequency, recency and T in days, and the mean repeat-occasion amount, per customer."""
    tx = pd.read_csv(cdnow_sample_path(), sep=r"\s+", header=None,
                     names=["master", "cid", "date", "qty", "amount"])
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    cal = tx[tx["date"] <= CALIBRATION_END]
    occ = cal.groupby(["cid", "date"], as_index=False)["amount"].sum()
    g = occ.groupby("cid")
    first, last, n = g["date"].min(), g["date"].max(), g.size()
    occ["k"] = g.cumcount()
    repeat_mean = occ[occ["k"] > 0].groupby("cid")["amount"].mean()
    return {
        "frequency": (n - 1).to_numpy(dtype=float),
        "recency": (last - first).dt.days.to_numpy(dtype=float),
        "T": (CALIBRATION_END - first).dt.days.to_numpy(dtype=float),
        "monetary_value": repeat_mean.reindex(first.index).fillna(0.0).to_numpy(),
    }


def cdnow_summary(as_of: str = "1997-09-30", holdout_share: float = 0.25):
    """The run summary of DESIGN.md §2 as of ``as_of``, built with pandas (no database).

    The same definitions as the SQL of ``crm_service.storage.summary``: occasions are calendar
    days, the calibration end is ``as_of`` minus ``holdout_share`` of the span.
    """
    from crm_service.scoring.inputs import RFM, Summary

    tx = pd.read_csv(cdnow_sample_path(), sep=r"\s+", header=None,
                     names=["master", "cid", "date", "qty", "amount"])
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    end = pd.Timestamp(as_of)
    occ = tx[tx["date"] <= end].groupby(["cid", "date"], as_index=False)["amount"].sum()
    occ = occ.sort_values(["cid", "date"])
    g = occ.groupby("cid")
    occ["k"] = g.cumcount()
    first, last, n = g["date"].min(), g["date"].max(), g.size()
    span = (end - first.min()).days
    cal_end = end - pd.Timedelta(days=max(int(span * holdout_share), 1))
    cal = occ[occ["date"] <= cal_end].groupby("cid")
    in_cal = first <= cal_end
    cal_n = cal.size().reindex(first.index).fillna(0).to_numpy()
    cal_last = cal["date"].max().reindex(first.index)
    big_t = (end - first).dt.days.to_numpy(dtype=float)
    daily = occ.assign(repeat=occ["k"] > 0, first=occ["k"] == 0).groupby("date")[
        ["repeat", "first"]].sum()
    mask = in_cal.to_numpy()
    return Summary(
        frequency=(n - 1).to_numpy(dtype=float),
        recency=(last - first).dt.days.to_numpy(dtype=float), T=big_t,
        as_of=end.date(),
        # Rounded to the cent half up, as PostgreSQL's round() of the exact mean.
        monetary_value=np.floor(occ[occ["k"] > 0].assign(c=lambda d: np.round(d["amount"] * 100))
                                .groupby("cid")["c"].mean().reindex(first.index).fillna(0.0)
                                .to_numpy() + 0.5) / 100,
        historic_spend=g["amount"].sum().to_numpy(),
        calibration_end=cal_end.date(), in_calibration=mask,
        calibration=RFM((cal_n[mask] - 1).astype(float),
                        (cal_last[mask] - first[mask]).dt.days.to_numpy(dtype=float),
                        big_t[mask] - (end - cal_end).days),
        days=[d.date() for d in daily.index],
        repeats=daily["repeat"].to_numpy(dtype=float),
        firsts=daily["first"].to_numpy(dtype=float),
    )


def cdnow_occasions(as_of: str = "1998-06-30"):
    """The CDNOW orders up to ``as_of`` as the run's occasion arrays (one channel, no refunds).

    Customers are numbered in id order (``cdnow-0001`` ... as the demo loads them); the
    sample bucket is a fixed function of the number.
    """
    from crm_service.scoring.occasions import EPOCH, Occasions

    tx = pd.read_csv(cdnow_sample_path(), sep=r"\s+", header=None,
                     names=["master", "cid", "date", "qty", "amount"])
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    tx = tx[tx["date"] <= pd.Timestamp(as_of)]
    occ = tx.groupby(["cid", "date"], as_index=False).agg(
        amount=("amount", "sum"), orders=("amount", "size"))
    index = {cid: i for i, cid in enumerate(sorted(occ["cid"].unique()))}
    customer = occ["cid"].map(index).to_numpy(np.int32)
    empty = np.empty(0, dtype=np.int32)
    return Occasions(
        customer=customer,
        day=(occ["date"] - pd.Timestamp(EPOCH)).dt.days.to_numpy(np.int32),
        cents=np.round(occ["amount"].to_numpy() * 100).astype(np.int64),
        paid_orders=occ["orders"].to_numpy(np.int32), channel=np.zeros(len(occ), np.int32),
        bucket=(customer * 40503) % 65536, customers=len(index),
        refund_customer=empty, refund_day=empty, refund_orders=empty)
