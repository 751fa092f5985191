"""The backtest: fit the purchase models on the first part of the history, predict the rest.

Pure numpy (no I/O). The held-out MAE picks the model that scores customers; the same pass
yields the data behind the diagnostics plots (Fader, Hardie & Lee 2005, Figs. 2 and 3).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np

from crm_service.errors import CrmError
from crm_service.scoring.inputs import RFM, Summary
from models._fitting import ConvergenceError
from models.purchase import PURCHASE_MODELS, PurchaseModel
from models.rfm import RFMHistogram, compress_with_index

PurchaseModelT = PurchaseModel

MIN_CUSTOMERS = 30
MIN_REPEAT_BUYERS = 10
MIN_HISTORY_DAYS = 28


class InsufficientHistoryError(CrmError):
    """Too little purchase history to fit the models."""

    title = "Insufficient history"


def check_history(summary: RFM) -> None:
    """Refuse to fit on too few customers, repeat buyers or days (InsufficientHistoryError)."""
    missing = []
    if summary.size < MIN_CUSTOMERS:
        missing.append(f"{summary.size} customers with a paid order (need {MIN_CUSTOMERS})")
    repeat = int(np.count_nonzero(summary.frequency > 0))
    if repeat < MIN_REPEAT_BUYERS:
        missing.append(f"{repeat} repeat buyers (need {MIN_REPEAT_BUYERS})")
    span = int(summary.T.max()) if summary.size else 0
    if span < MIN_HISTORY_DAYS:
        missing.append(f"{span} days of history (need {MIN_HISTORY_DAYS})")
    if missing:
        raise InsufficientHistoryError("not enough purchase history to score: "
                                       + "; ".join(missing))


def fit_purchase_models(hist: RFMHistogram,
                         start: dict[str, PurchaseModelT] | None = None, *,
                         standard_errors: bool = True
                         ) -> tuple[dict[str, PurchaseModelT], dict[str, str]]:
    """Fit every purchase model; return the fits and, by name, the ones that did not converge.

    ``start`` (fits on similar data) warm-starts the optimiser; ``standard_errors=False``
    skips them where only predictions are used. One model failing (e.g.
    Pareto/NBD running along its no-dropout ridge) does not stop the run while another fits.
    """
    fitted: dict[str, PurchaseModelT] = {}
    failed: dict[str, str] = {}
    for name, cls in PURCHASE_MODELS.items():
        initial = start[name].params_ if start and name in start else None
        try:
            fitted[name] = cls().fit(hist, initial=initial, standard_errors=standard_errors)
        except ConvergenceError as exc:
            if initial is None:
                failed[name] = str(exc)
                continue
            # A warm start can send the first line search far out; start cold once more.
            try:
                fitted[name] = cls().fit(hist, standard_errors=standard_errors)
            except ConvergenceError as cold:
                failed[name] = str(cold)
    if not fitted:
        raise ConvergenceError("no purchase model converged: " + "; ".join(failed.values()))
    return fitted, failed


def backtest(summary: Summary, start: dict[str, PurchaseModelT] | None = None
             ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, PurchaseModelT]]:
    """Backtest both purchase models: fit up to the calibration end, predict the rest.

    ``start`` warm-starts the calibration fits (the previous run's). Returns the metrics per
    model, the data behind the diagnostics plots, and the calibration fits (good starting
    points for the fits on the full history).
    """
    cal, cal_end, holdout_days = summary.calibration, summary.calibration_end, \
        summary.holdout_days
    try:
        check_history(cal)
    except InsufficientHistoryError as exc:
        raise InsufficientHistoryError(
            f"the backtest holds out the last {holdout_days} days, which leaves too little "
            f"history before {cal_end}: {exc.detail.split(': ', 1)[1]}") from None
    actual = summary.frequency[summary.in_calibration] - cal.frequency
    weeks, cumulative = _weekly_cumulative(summary.days, summary.repeats, summary.as_of)
    out = {}
    diagnostics: dict[str, Any] = {
        "calibration_end": cal_end.isoformat(), "holdout_days": holdout_days,
        "weeks": [w.isoformat() for w in weeks], "actual_cumulative": cumulative,
        "predicted_cumulative": {}, "by_frequency": {},
    }
    hist, index = compress_with_index(cal.frequency, cal.recency, cal.T)
    # Only the predictions of the calibration fits are used: no standard errors.
    calibration, _failed = fit_purchase_models(hist, start, standard_errors=False)
    for name, model in calibration.items():
        predicted = model.conditional_expected_purchases(holdout_days, hist.frequency,
                                                         hist.recency, hist.T)[index]
        err = predicted - actual
        out[name] = {
            "calibration_end": cal_end.isoformat(), "holdout_days": holdout_days,
            "customers": cal.size, "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err ** 2))),
            "actual_repeat_purchases": float(actual.sum()),
            "predicted_repeat_purchases": float(predicted.sum()),
            "calibration_params": {k: float(v) for k, v in model.params_.items()},
        }
        diagnostics["by_frequency"][name] = _by_frequency(cal.frequency, actual, predicted)
        diagnostics["predicted_cumulative"][name] = _tracking(model, summary.days,
                                                              summary.firsts, weeks)
    return out, diagnostics, calibration


def _weekly_cumulative(days: list[date], repeats: np.ndarray,
                       as_of: date) -> tuple[list[date], list[float]]:
    start = days[0]
    weeks = [start + timedelta(days=7 * k) for k in range(1, (as_of - start).days // 7 + 2)]
    offsets = np.array([(d - start).days for d in days])
    cum = np.cumsum(repeats)
    idx = np.searchsorted(offsets, [(w - start).days for w in weeks], side="right") - 1
    return weeks, [float(cum[i]) if i >= 0 else 0.0 for i in idx]


def _tracking(model: PurchaseModelT, days: list[date], firsts: np.ndarray,
              weeks: list[date]) -> list[float]:
    """Expected cumulative repeat purchases of all cohorts, week by week (FHL 2005, Fig. 2)."""
    start = days[0]
    cohort = np.array([(d - start).days for d in days], dtype=float)
    grid = np.array([(w - start).days for w in weeks], dtype=float)
    age = np.clip(grid[:, None] - cohort[None, :], 0.0, None)
    expected = model.expected_purchases_new_customer(age)
    return [float(v) for v in (expected * firsts[None, :]).sum(axis=1)]


def _by_frequency(x_cal: np.ndarray, actual: np.ndarray,
                  predicted: np.ndarray) -> list[dict[str, Any]]:
    """Mean held-out purchases by calibration frequency, 0..6 and 7+ (FHL 2005, Fig. 3)."""
    rows = []
    for k in range(8):
        mask = x_cal == k if k < 7 else x_cal >= 7
        if mask.any():
            rows.append({"frequency": str(k) if k < 7 else "7+", "customers": int(mask.sum()),
                         "actual": float(actual[mask].mean()),
                         "predicted": float(predicted[mask].mean())})
    return rows
