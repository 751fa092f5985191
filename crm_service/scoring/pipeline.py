"""The pure scoring pipeline: from a run's inputs to its scored arrays, with no I/O.

:func:`score_base` is the functional core of a scoring run (STYLE.md, "pure core, I/O at the
edges"): the backtest picks the purchase model, the fits run on the compressed (x, t_x, T)
histogram, every customer gets P(alive), expected purchases, spend and CLV, then churn
probability, tier, segments and action. Whatever engine loaded the inputs, the same code
scores them.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crm_service.scoring.backtest import (
    PurchaseModelT,
    backtest,
    check_history,
    fit_purchase_models,
)
from crm_service.scoring.churn import score_churn
from crm_service.scoring.inputs import RunConfig, RunInputs, ScoredRun, Summary
from crm_service.scoring.segmenting import assign_segments
from models import forecast
from models._fitting import ConvergenceError
from models.clv import customer_lifetime_value, value_deciles
from models.gamma_gamma import GammaGammaModel
from models.purchase import PURCHASE_MODELS
from models.rfm import RFMHistogram, compress_with_index
from models.segments import ALIVE_NOTES, alive_notes

HORIZONS = (30, 90, 365)
INTERVAL_DAYS = 365  # the stored intervals: purchases and spend in the next 12 months
MIN_RECALIBRATION_CUSTOMERS = 2000  # fewer in the backtest: nominal levels


def score_base(inputs: RunInputs, config: RunConfig) -> ScoredRun:
    """Score every customer of ``inputs.summary``; arrays come back in summary order.

    Raises
    ------
    InsufficientHistoryError
        Too few customers, repeat buyers or days of history (for the run or its backtest).
    ConvergenceError, ValueError
        No purchase model converged, or a fit produced unusable numbers.
    """
    summary, horizon = inputs.summary, config.churn_horizon_days
    stages: dict[str, float] = {}
    since = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stages[name] = round(now - since[0], 3)
        since[0] = now

    check_history(summary)
    previous_full, previous_cal = _warm_starts(inputs.previous_models)
    holdout, diagnostics, calibration = backtest(summary, previous_cal or None)
    hist, index = compress_with_index(summary.frequency, summary.recency, summary.T)
    fitted, failed = fit_purchase_models(hist, start={**calibration, **previous_full})
    # The model that predicted the held-out period better (lower MAE) scores customers.
    candidates = [name for name in fitted if name in holdout]
    if not candidates:
        raise ConvergenceError("no purchase model converged on both the calibration period"
                               " and the full history")
    selected = min(candidates, key=lambda name: holdout[name]["mae"])
    repeat = (summary.frequency > 0) & (summary.monetary_value > 0)
    gg = GammaGammaModel().fit(summary.frequency[repeat], summary.monetary_value[repeat])
    lap("fits")
    model = fitted[selected]
    computed, counts = _scores(summary, hist, index, model, gg)
    lap("scores")
    recalibration = _recalibration(summary, calibration.get(selected))
    levels = recalibration.levels if recalibration else forecast.LEVELS
    computed.update(_intervals(summary, hist, index, model, gg, levels))
    lap("intervals")
    baseline = model.probability_no_purchases(horizon, hist.frequency, hist.recency,
                                              hist.T)[index]
    churn = score_churn(inputs.churn, as_of=summary.as_of, horizon=horizon,
                        span_days=summary.span_days, model_name=selected, model=model,
                        baseline=baseline, policy=config.churn_model)
    computed["churn_probability"] = churn.probability
    medium, high = config.risk_bands
    counts["churn_risk"] = {
        "low": int(np.count_nonzero(churn.probability < medium)),
        "medium": int(np.count_nonzero((churn.probability >= medium)
                                       & (churn.probability < high))),
        "high": int(np.count_nonzero(churn.probability >= high)),
    }
    computed["alive_note_code"] = alive_notes(
        computed["p_alive"], summary.frequency, churn.probability, high_risk=high,
        one_time_buyers_assumed_alive=type(model).one_time_buyers_assumed_alive
    ).astype(np.float64)
    counts["alive_notes"] = {name: int(np.count_nonzero(computed["alive_note_code"] == i))
                             for i, name in enumerate(ALIVE_NOTES)}
    lap("churn")
    labels = assign_segments(summary, computed, inputs.policy, inputs.previous, high, counts)
    labels["alive_notes"] = list(ALIVE_NOTES)
    lap("tiers")
    models = {
        "selected": selected,
        **{name: {**_params_json(m), "holdout": holdout.get(name)}
           for name, m in fitted.items()},
        **{name: {"error": reason} for name, reason in failed.items()},
        "gamma_gamma": _params_json(gg),
        "clv": {"months": 12, "monthly_discount": 0.01, "days_per_month": 30},
        "intervals": {
            "days": INTERVAL_DAYS, "levels": list(forecast.LEVELS),
            "calibrated_levels": list(levels) if recalibration else None,
            "backtest_pit": list(recalibration.pit) if recalibration else None,
            "backtest_customers": recalibration.customers if recalibration else 0,
            "parameter_uncertainty": False},
        "churn": {**churn.info, "risk_thresholds": {"medium": medium, "high": high}},
        "tier_policy": {"version": inputs.policy_version, **inputs.policy.as_dict()},
    }
    return ScoredRun(computed=computed, counts=counts, models=models, diagnostics=diagnostics,
                     labels=labels, policy_version=inputs.policy_version,
                     risk_bands=config.risk_bands, churn_artifact=churn.artifact,
                     stage_seconds=stages)


def _warm_starts(models: dict[str, Any]
                 ) -> tuple[dict[str, PurchaseModelT], dict[str, PurchaseModelT]]:
    """The previous run's full-history and calibration fits, as starting points."""
    full: dict[str, PurchaseModelT] = {}
    cal: dict[str, PurchaseModelT] = {}
    for name, cls in PURCHASE_MODELS.items():
        record = models.get(name)
        if not isinstance(record, dict):
            continue
        try:
            if "params" in record:
                full[name] = cls.from_params(record["params"])
            if (record.get("holdout") or {}).get("calibration_params"):
                cal[name] = cls.from_params(record["holdout"]["calibration_params"])
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # a record of another shape: start cold
    return full, cal


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON (and jsonb) have no NaN


def _params_json(model: Any, log_likelihood: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "params": {k: float(v) for k, v in model.params_.items()},
        "standard_errors": {k: _finite_or_none(v) for k, v in model.standard_errors_.items()},
    }
    if log_likelihood:
        out["log_likelihood"] = float(model.log_likelihood_)
    return out


def _recalibration(summary: Summary, cal_model: PurchaseModelT | None
                   ) -> forecast.Recalibration | None:
    """Interval levels learned on this run's own backtest (``models.forecast.recalibrate``).

    The selected model's calibration-period fit predicted the held-out days; where its
    quantiles were off there (on CDNOW: too few of the one-time buyers who came back), the
    levels move so that the intervals hold what they say. None (nominal levels) when the
    backtest has fewer than :data:`MIN_RECALIBRATION_CUSTOMERS` customers: their PIT's
    quantiles would be noise.
    """
    cal = summary.calibration
    if cal_model is None or cal.size < MIN_RECALIBRATION_CUSTOMERS:
        return None
    actual = summary.frequency[summary.in_calibration] - cal.frequency
    return forecast.recalibrate(cal_model, summary.holdout_days, cal.frequency, cal.recency,
                                cal.T, actual, seed=summary.as_of.toordinal())


def _intervals(summary: Summary, hist: RFMHistogram, index: NDArray[np.intp],
               model: PurchaseModelT, gg: GammaGammaModel,
               levels: tuple[float, ...]) -> dict[str, NDArray[np.float64]]:
    """Central 80% intervals of each customer's purchases and spend in the next 12 months.

    Computed once per histogram row (``models.forecast``) at ``levels`` (nominal 0.1 and 0.9,
    or as recalibrated on the backtest): the purchase quantiles directly, the spend quantiles
    in the Gamma-Gamma posterior's scale, multiplied per customer by gamma + x m (the scale of
    their posterior; x = 0 gives the population's). The spend uses the purchases' levels: its
    miscalibration comes through the count (on CDNOW the levels learned from spend were
    0.099-0.917 against 0.100-0.917 from purchases).
    """
    p, q, gamma = (gg.params_[k] for k in ("p", "q", "v"))
    row_counts, row_factors = forecast.intervals(model, INTERVAL_DAYS, hist.frequency,
                                                 hist.recency, hist.T, p, q, levels)
    counts, factor = row_counts.astype(np.float64)[index], row_factors[index]
    scale = gamma + summary.frequency * summary.monetary_value
    return {
        "purchases_365_p10": counts[:, 0], "purchases_365_p90": counts[:, 1],
        "spend_365_p10": factor[:, 0] * scale, "spend_365_p90": factor[:, 1] * scale,
    }


def _scores(summary: Summary, hist: RFMHistogram, index: NDArray[np.intp],
            model: PurchaseModelT, gg: GammaGammaModel
            ) -> tuple[dict[str, NDArray[np.float64]], dict[str, Any]]:
    """Per-customer scores (arrays in summary order, see ``inputs.COMPUTED``) and totals.

    What the purchase model predicts depends on (x, t_x, T) alone, so it is computed once per
    histogram row and spread to customers through ``index``.
    """
    hx, ht_x, h_t = hist.frequency, hist.recency, hist.T
    alive = model.probability_alive(hx, ht_x, h_t)
    expected = {h: model.conditional_expected_purchases(h, hx, ht_x, h_t) for h in HORIZONS}
    discounted = customer_lifetime_value(model, hx, ht_x, h_t, np.ones_like(hx))
    wait = model.median_time_to_next_purchase(hx, ht_x, h_t)
    next_order = np.where((alive >= 0.5) & (wait < 3650), np.ceil(wait), np.nan)
    spend = gg.conditional_expected_spend(summary.frequency, summary.monetary_value)
    clv = spend * discounted[index]
    computed = {
        "p_alive": alive[index],
        **{f"expected_purchases_{h}": expected[h][index] for h in HORIZONS},
        "next_order_days": next_order[index], "expected_spend": spend, "clv_12m": clv,
    }
    counts = {
        "customers": summary.size,
        "repeat_buyers": int(np.count_nonzero(summary.frequency > 0)),
        "occasions": int(summary.frequency.sum() + summary.size),
        "expected_purchases_90": float(computed["expected_purchases_90"].sum()),
        "clv_12m_total": float(clv.sum()),
        "clv_deciles": value_deciles(clv),
    }
    return computed, counts
