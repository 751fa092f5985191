"""A base's purchase occasions as arrays, and what a run derives from them (pure numpy).

The local engine reads the occasions once (one aggregation of the orders in PostgreSQL,
DESIGN.md §2: a customer's paid orders of one local day are one occasion) and everything else
is computed here: the RFM summary as of ``as_of`` and as of the backtest's calibration end,
the daily tracking counts, and the raw churn aggregates at every cut-off. Each customer's
occasions are contiguous and in day order, so "the occasions up to cut-off c" are a prefix of
each customer's rows: counts, sums and first-occurrence flags computed once over the whole
sequence stay valid for every prefix.

Days are integers (days since 2000-01-01), money integer cents: sums and means are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from crm_service.scoring import churn
from crm_service.scoring.inputs import RAW_CHURN, RFM, ChurnInputs, Summary

EPOCH = date(2000, 1, 1)


def day_number(d: date) -> int:
    """``d`` as days since :data:`EPOCH`."""
    return (d - EPOCH).days


@dataclass
class Occasions:
    """Purchase occasions sorted by (customer, day); customer ``i`` is the summary's row ``i``.

    ``bucket`` is a hash of each occasion's customer id in 0..65535 (the fixed pseudo-random
    training sample), ``channel`` a code of the occasion's channel (the smallest channel of
    the day's orders). ``refund_*`` hold refunded orders per customer and day.
    """

    customer: NDArray[np.int32]
    day: NDArray[np.int32]
    cents: NDArray[np.int64]
    paid_orders: NDArray[np.int32]
    channel: NDArray[np.int32]
    bucket: NDArray[np.int32]
    customers: int
    refund_customer: NDArray[np.int32]
    refund_day: NDArray[np.int32]
    refund_orders: NDArray[np.int32]

    def __post_init__(self) -> None:
        # The reader's order is not guaranteed, but it is nearly always already (customer,
        # day): check in one pass and sort only when needed.
        key = (self.customer.astype(np.int64) << 32) + (self.day.astype(np.int64) + 2**31)
        if key.size > 1 and not np.all(key[1:] > key[:-1]):
            order = np.argsort(key, kind="stable")
            for name in ("customer", "day", "cents", "paid_orders", "channel", "bucket"):
                setattr(self, name, getattr(self, name)[order])

    def subset(self, keep: NDArray[np.bool_]) -> Occasions:
        """The occasions of the customers in ``keep`` (a mask over customers), renumbered."""
        rows = keep[self.customer]
        new_index = np.cumsum(keep, dtype=np.int64) - 1
        back = keep[self.refund_customer]
        return Occasions(
            customer=new_index[self.customer[rows]].astype(np.int32), day=self.day[rows],
            cents=self.cents[rows], paid_orders=self.paid_orders[rows],
            channel=self.channel[rows], bucket=self.bucket[rows], customers=int(keep.sum()),
            refund_customer=new_index[self.refund_customer[back]].astype(np.int32),
            refund_day=self.refund_day[back], refund_orders=self.refund_orders[back])

    @cached_property
    def starts(self) -> NDArray[np.intp]:
        """Index of each customer's first occasion (every customer has one)."""
        return np.searchsorted(self.customer, np.arange(self.customers))

    @cached_property
    def is_first(self) -> NDArray[np.bool_]:
        """Whether each row is its customer's first occasion."""
        first = np.zeros(self.customer.size, dtype=bool)
        first[self.starts] = True
        return first

    @cached_property
    def gap(self) -> NDArray[np.float64]:
        """Days since the customer's previous occasion (NaN for the first)."""
        gap = np.empty(self.day.size)
        gap[0:1] = np.nan
        gap[1:] = np.diff(self.day)
        gap[self.is_first] = np.nan
        return gap

    @cached_property
    def new_channel(self) -> NDArray[np.bool_]:
        """Whether each row is the first of its customer on its channel."""
        key = (self.customer.astype(np.int64) << 32) | (self.channel.astype(np.int64)
                                                        & 0xFFFFFFFF)
        _, first = np.unique(key, return_index=True)
        flag = np.zeros(key.size, dtype=bool)
        flag[first] = True
        return flag

    @cached_property
    def new_month(self) -> NDArray[np.bool_]:
        """Whether each row is the first of its customer in its calendar month."""
        month = (np.datetime64(EPOCH, "D") + self.day.astype("timedelta64[D]")).astype(
            "datetime64[M]").astype(np.int64)
        flag = np.ones(month.size, dtype=bool)
        flag[1:] = month[1:] != month[:-1]
        return flag | self.is_first

    @cached_property
    def on_first_channel(self) -> NDArray[np.bool_]:
        """Whether each row's channel is the channel of the customer's first occasion."""
        return self.channel == self.channel[self.starts][self.customer]


def summarize(occ: Occasions, as_of: date, *, holdout_share: float = 0.25) -> Summary:
    """The run summary (DESIGN.md §2) as of ``as_of``; the occasions end there.

    The calibration end is ``as_of`` minus ``holdout_share`` of the span from the first
    purchase (at least one day). ``monetary_value`` is the mean repeat occasion rounded to the
    cent (half up, as PostgreSQL's ``round``).
    """
    n, c = occ.customers, occ.customer
    end = day_number(as_of)
    first = occ.day[occ.starts].astype(np.int64)
    count = np.bincount(c, minlength=n)
    last = occ.day[occ.starts + count - 1].astype(np.int64) if n else first
    span = int(end - first.min()) if n else 0
    cal_end = as_of - timedelta(days=max(int(span * holdout_share), 1))
    repeat_cents = np.bincount(c, weights=np.where(occ.is_first, 0, occ.cents), minlength=n)
    repeats = count - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        # round(sum / k, 2) in cents, half up: floor((2 * sum + k) / (2 * k)); exact in int64.
        mean_cents = np.where(repeats > 0, (2 * repeat_cents.astype(np.int64) + repeats)
                              // np.maximum(2 * repeats, 1), 0)
    historic = np.bincount(c, weights=occ.cents, minlength=n)
    in_window = occ.day <= day_number(cal_end)
    cal_count = np.bincount(c, weights=in_window, minlength=n).astype(np.int64)
    in_cal = cal_count > 0
    # The occasions up to the calibration end are a prefix of each customer's rows.
    cal_last = occ.day[occ.starts + np.maximum(cal_count, 1) - 1].astype(np.int64)
    big_t = (end - first).astype(np.float64)
    lo = int(first.min()) if n else end
    by_day_first = np.bincount(occ.day[occ.is_first] - lo, minlength=end - lo + 1)
    by_day_repeat = np.bincount(occ.day[~occ.is_first] - lo, minlength=end - lo + 1)
    active = np.flatnonzero(by_day_first + by_day_repeat)
    return Summary(
        frequency=repeats.astype(np.float64), recency=(last - first).astype(np.float64),
        T=big_t, as_of=as_of, monetary_value=mean_cents / 100.0, historic_spend=historic / 100.0,
        calibration_end=cal_end, in_calibration=in_cal,
        calibration=RFM((cal_count[in_cal] - 1).astype(np.float64),
                        (cal_last[in_cal] - first[in_cal]).astype(np.float64),
                        big_t[in_cal] - (as_of - cal_end).days),
        days=[EPOCH + timedelta(days=lo + int(k)) for k in active],
        repeats=by_day_repeat[active].astype(np.float64),
        firsts=by_day_first[active].astype(np.float64),
    )


def churn_raw(occ: Occasions, cutoff: date, horizon: int, *,
              keep: NDArray[np.bool_] | None = None) -> NDArray[np.float32]:
    """Raw churn aggregates (``RAW_CHURN`` columns) as of ``cutoff``, one row per customer.

    Rows are the customers who had an occasion by ``cutoff`` (and, with ``keep``, a mask over
    customers, only those kept), in customer order; when every customer qualifies and none is
    dropped, that is summary order. NaN where a value is undefined (interval statistics
    without repeat purchases). ``future`` counts occasions in (cutoff, cutoff + horizon].
    """
    n, c, cut = occ.customers, occ.customer, day_number(cutoff)
    p = occ.day <= cut
    cp = c[p]

    def total(weights: NDArray | None = None, mask: NDArray[np.bool_] | None = None
              ) -> NDArray[np.float64]:
        rows = p if mask is None else p & mask
        w = None if weights is None else weights[rows]
        return np.bincount(c[rows], weights=w, minlength=n).astype(np.float64)

    count = total()
    present = count > 0 if keep is None else (count > 0) & keep
    out = np.empty((int(present.sum()), len(RAW_CHURN)), dtype=np.float32)

    def put(name: str, values: NDArray[np.float64]) -> None:
        # Column by column: ten million customers hold one float64 column at a time.
        out[:, RAW_CHURN.index(name)] = values[present]

    starts = occ.starts
    first = occ.day[starts].astype(np.float64)
    # The last row of each customer's prefix: the prefix is contiguous from `starts`.
    last_row = starts + np.maximum(count.astype(np.intp), 1) - 1
    put("frequency", count - 1)
    put("recency", occ.day[last_row] - first)
    put("T", cut - first)
    gap = occ.gap
    has_gap = ~np.isnan(gap)
    g0 = np.where(has_gap, gap, 0.0)
    n_gaps, s1, s2 = total(mask=has_gap), total(g0), total(g0 * g0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (s2 - s1 * s1 / n_gaps) / (n_gaps - 1)
        put("std_interval", np.where(n_gaps >= 2, np.sqrt(np.maximum(var, 0.0)), np.nan))
        del g0, n_gaps, s1, s2, var
        max_gap = np.full(n, -np.inf)
        np.maximum.at(max_gap, cp, np.where(has_gap[p], gap[p], -np.inf))
        max_gap[np.isinf(max_gap)] = np.nan
        put("max_interval", max_gap)
        put("last_interval", gap[last_row])
        paid = total(occ.paid_orders)
        rp = occ.refund_day <= cut
        refunded = np.bincount(occ.refund_customer[rp], weights=occ.refund_orders[rp],
                               minlength=n).astype(np.float64)
        put("refund_share", refunded / (paid + refunded))
        put("first_channel_share", total(mask=occ.on_first_channel) / count)
    put("historic_spend", total(occ.cents) / 100.0)
    put("channels", total(mask=occ.new_channel))
    put("active_months", total(mask=occ.new_month))
    put("first_spend", occ.cents[starts] / 100.0)
    put("spend_prev_90", total(occ.cents, (occ.day > cut - 180) & (occ.day <= cut - 90)) / 100.0)
    put("future", np.bincount(c, weights=(occ.day > cut) & (occ.day <= cut + horizon),
                              minlength=n).astype(np.float64))
    for window in (30, 90, 180, 365):
        recent = occ.day > cut - window
        put(f"occasions_{window}", total(mask=recent))
        put(f"spend_{window}", total(occ.cents, recent) / 100.0)
    return out


def sample_mask(occ: Occasions, share: float) -> NDArray[np.bool_] | None:
    """Customers kept in the training windows: a fixed hash sample (None: everyone)."""
    if share >= 1.0:
        return None
    return occ.bucket[occ.starts] < int(share * 65536) + 1


def churn_inputs(occ: Occasions, as_of: date, horizon: int, span_days: int) -> ChurnInputs:
    """The raw aggregates of every cut-off the churn stage reads (``churn.cutoffs``)."""
    share = churn.sample_share(occ.customers)
    keep = sample_mask(occ, share)
    sample = occ if keep is None else occ.subset(keep)  # the windows read only the sample
    windows = {cutoff: churn_raw(sample, cutoff, horizon)
               for cutoff in churn.cutoffs(as_of, horizon, span_days)}
    return ChurnInputs(windows=windows, now=churn_raw(occ, as_of, horizon), share=share)
