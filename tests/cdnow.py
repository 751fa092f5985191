"""The CDNOW sample (shipped with lifetimes) as calibration-period RFM arrays.

Purchase occasions are calendar days (DESIGN.md §2); the calibration period ends 1997-09-30, as
in Fader, Hardie & Lee (2005).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from crm_service.demo import cdnow_sample_path

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
