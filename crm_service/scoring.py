"""A scoring run: summary, model fits, backtest, per-customer scores, atomic publish.

``run_scoring`` is the whole pipeline. A run is recorded before any work starts; if anything
fails (too little data, a fit that does not converge), the run is marked failed with the reason
and the previously published run stays live.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from crm_service import score_store
from crm_service.churn import score_churn
from crm_service.config import Settings
from crm_service.db import DatabaseError, TransactionStatus
from crm_service.errors import CrmError
from models import segments
from models._fitting import ConvergenceError
from models.beta_geo import BetaGeoModel
from models.clv import customer_lifetime_value, value_deciles
from models.gamma_gamma import GammaGammaModel
from models.pareto_nbd import ParetoNBDModel
from models.purchase import PURCHASE_MODELS
from models.rfm import RFMHistogram, compress_with_index
from models.segments import TierPolicy

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

PurchaseModelT = BetaGeoModel | ParetoNBDModel

MIN_CUSTOMERS = 30
MIN_REPEAT_BUYERS = 10
MIN_HISTORY_DAYS = 28
HORIZONS = (30, 90, 365)


class InsufficientHistoryError(CrmError):
    """Too little purchase history to fit the models."""

    title = "Insufficient history"


class ScoringFailedError(CrmError):
    """A scoring run failed; the previous run stays live."""

    title = "Scoring run failed"


@dataclass
class RunResult:
    """What ``crm-service score --json`` prints."""

    run_id: int
    as_of: date
    counts: dict[str, Any]
    models: dict[str, Any]
    seconds: float
    churn_horizon_days: int = 90

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), "time_unit": "days",
                "churn_horizon_days": self.churn_horizon_days, "counts": self.counts,
                "models": self.models, "seconds": round(self.seconds, 3)}


def _check_history(summary: score_store.RFM) -> None:
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


def _fit_purchase_models(hist: RFMHistogram,
                         start: dict[str, PurchaseModelT] | None = None
                         ) -> tuple[dict[str, PurchaseModelT], dict[str, str]]:
    """Fit every purchase model; return the fits and, by name, the ones that did not converge.

    ``start`` (fits on similar data) warm-starts the optimiser. One model failing (e.g.
    Pareto/NBD running along its no-dropout ridge) does not stop the run while another fits.
    """
    fitted: dict[str, PurchaseModelT] = {}
    failed: dict[str, str] = {}
    for name, cls in PURCHASE_MODELS.items():
        initial = start[name].params_ if start and name in start else None
        try:
            fitted[name] = cls().fit(hist, initial=initial)
        except ConvergenceError as exc:
            if initial is None:
                failed[name] = str(exc)
                continue
            # A warm start can send the first line search far out; start cold once more.
            try:
                fitted[name] = cls().fit(hist)
            except ConvergenceError as cold:
                failed[name] = str(cold)
    if not fitted:
        raise ConvergenceError("no purchase model converged: " + "; ".join(failed.values()))
    return fitted, failed


def _holdout(summary: score_store.Summary
             ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, PurchaseModelT]]:
    """Backtest both purchase models: fit up to the calibration end, predict the rest.

    Returns the metrics per model, the data behind the diagnostics plots, and the calibration
    fits (good starting points for the fits on the full history).
    """
    cal, cal_end, holdout_days = summary.calibration, summary.calibration_end, \
        summary.holdout_days
    try:
        _check_history(cal)
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
    calibration, _failed = _fit_purchase_models(hist)
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


def run_scoring(conn: psycopg.Connection, settings: Settings, *, as_of: date,
                run_id: int | None = None, attempt: int = 1,
                churn_horizon_days: int | None = None) -> RunResult:
    """Score every customer as of ``as_of`` and publish the run atomically.

    ``run_id`` and ``attempt`` identify a run already claimed by a worker (its churn horizon
    is the one recorded with it); without them a new run is recorded with
    ``churn_horizon_days`` (default: the configured one).

    Raises
    ------
    InsufficientHistoryError, ScoringFailedError
        After recording the run as failed; the previous run stays live.
    RunTakenOverError
        If another worker took the run over meanwhile (nothing is published by this attempt).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("run_scoring commits its own transactions; pass an idle connection")
    started = time.perf_counter()
    stages: dict[str, float] = {}

    def stage_done(name: str, since: list[float] = [started]) -> None:  # noqa: B006
        now = time.perf_counter()
        stages[name] = round(now - since[0], 3)
        since[0] = now

    if run_id is None:
        horizon = churn_horizon_days or settings.churn_horizon_days
        run_id = score_store.create_run(conn, as_of, settings.timezone,
                                        churn_horizon_days=horizon)
    else:
        record = score_store.run_record(conn, run_id)
        conn.commit()
        horizon = int(record["churn_horizon_days"]) if record else settings.churn_horizon_days
    try:
        score_store.set_progress(conn, run_id, attempt, "summarising orders")
        # Summary, backtest summary and the occasions the churn features use: one snapshot.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            summary = score_store.load_summary(conn, as_of, settings.timezone)
            stage_done("summary")
            span = int(summary.T.max()) if summary.size else 0
            # Only when a churn model can be trained: history of 2H at least, not disabled.
            if span >= 2 * horizon and settings.churn_model != "baseline":
                score_store.collect_occasions(conn, as_of, settings.timezone)
            stage_done("churn_occasions")
        _check_history(summary)
        score_store.set_progress(conn, run_id, attempt, "fitting models")
        holdout, diagnostics, calibration = _holdout(summary)
        hist, index = compress_with_index(summary.frequency, summary.recency, summary.T)
        fitted, failed = _fit_purchase_models(hist, start=calibration)
        # The model that predicted the held-out period better (lower MAE) scores customers.
        candidates = [name for name in fitted if name in holdout]
        if not candidates:
            raise ConvergenceError("no purchase model converged on both the calibration period"
                                   " and the full history")
        selected = min(candidates, key=lambda name: holdout[name]["mae"])
        repeat = (summary.frequency > 0) & (summary.monetary_value > 0)
        gg = GammaGammaModel().fit(summary.frequency[repeat], summary.monetary_value[repeat])
        stage_done("fits")
        score_store.set_progress(conn, run_id, attempt, "scoring customers")
        model = fitted[selected]
        computed, counts = _scores(summary, hist, index, model, gg)
        stage_done("scores")
        score_store.set_progress(conn, run_id, attempt, "churn model")
        baseline = model.probability_no_purchases(horizon, hist.frequency, hist.recency,
                                                  hist.T)[index]
        churn = score_churn(conn, as_of=as_of, horizon=horizon, span_days=span,
                            model_name=selected, model=model, baseline=baseline,
                            policy=settings.churn_model)
        conn.commit()
        computed["churn_probability"] = churn.probability
        bands = (settings.churn_risk_medium, settings.churn_risk_high)
        counts["churn_risk"] = {
            "low": int(np.count_nonzero(churn.probability < bands[0])),
            "medium": int(np.count_nonzero((churn.probability >= bands[0])
                                           & (churn.probability < bands[1]))),
            "high": int(np.count_nonzero(churn.probability >= bands[1])),
        }
        stage_done("churn")
        policy_version, policy_json = score_store.current_tier_policy(conn)
        policy = TierPolicy.from_dict(policy_json)
        previous = score_store.previous_tiers(conn, list(segments.TIERS), as_of)
        conn.commit()
        labels = _segments(summary, computed, policy, previous, bands[1], counts)
        stage_done("tiers")
        counts["stage_seconds"] = stages
        models = {
            "selected": selected,
            **{name: {**_params_json(m), "holdout": holdout.get(name)}
               for name, m in fitted.items()},
            **{name: {"error": reason} for name, reason in failed.items()},
            "gamma_gamma": _params_json(gg),
            "clv": {"months": 12, "monthly_discount": 0.01, "days_per_month": 30},
            "churn": {**churn.info, "risk_thresholds": {"medium": bands[0], "high": bands[1]}},
            "tier_policy": {"version": policy_version, **policy.as_dict()},
        }
        score_store.publish_run(conn, run_id, attempt, as_of, computed, counts, models,
                                diagnostics, risk_thresholds=bands,
                                churn_artifact=churn.artifact, labels=labels,
                                tier_policy_version=policy_version,
                                ref_params=_ref_params(settings))
        score_store.drop_summary(conn)
        conn.commit()
    except score_store.RunTakenOverError:
        conn.rollback()
        raise
    except InsufficientHistoryError as exc:
        _record_failure(conn, run_id, attempt, exc.detail)
        raise
    except (ConvergenceError, ValueError) as exc:
        _record_failure(conn, run_id, attempt, f"model fit failed: {exc}")
        raise ScoringFailedError(f"run {run_id} failed: model fit failed: {exc}; the previous "
                                 "run stays live") from exc
    except BaseException as exc:
        _record_failure(conn, run_id, attempt, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _release(conn, run_id)
    seconds = time.perf_counter() - started
    log.info("scoring run %s published: %s customers in %.1f s", run_id, counts["customers"],
             seconds)
    _render_plots(conn, run_id)
    return RunResult(run_id, as_of, counts, models, seconds, horizon)


def _render_plots(conn: psycopg.Connection, run_id: int) -> None:
    """Render and store the new run's plots, so no reader waits for matplotlib.

    Best effort: the run is already live, and a plot that is missing here is rendered on its
    first request instead.
    """
    from crm_service.plots import LANGUAGES, PLOTS, run_plot

    try:
        for name in PLOTS:
            for lang in LANGUAGES:
                run_plot(conn, run_id, name, lang)
        conn.commit()
    except Exception:
        conn.rollback()
        log.warning("scoring run %s: plots not rendered now; they will be on first request",
                    run_id, exc_info=True)


def _ref_params(settings: Settings) -> dict[str, bytes]:
    """Keys for each event's ``customer_ref`` (ConfigError without a server key)."""
    from crm_service.erasure import ref_sql_params

    return ref_sql_params(settings)


def _release(conn: psycopg.Connection, run_id: int) -> None:
    try:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            conn.rollback()
        score_store.release_run(conn, run_id)
    except DatabaseError:  # the session is gone, and its lock with it
        log.debug("could not release run %s (connection lost)", run_id)


def _record_failure(conn: psycopg.Connection, run_id: int, attempt: int, reason: str) -> None:
    """Mark the run failed, or log why that was impossible.

    If the database itself is gone the original error goes on; the run's ownership lock went
    with the session, so the next worker (or ``crm-service score``) marks it failed.
    """
    try:
        conn.rollback()
        score_store.fail_run(conn, run_id, attempt, reason)
        score_store.drop_summary(conn)
        conn.commit()
    except DatabaseError:
        log.exception("could not record the failure of scoring run %s", run_id)


def _segments(summary: score_store.Summary, computed: dict[str, NDArray[np.float64]],
              policy: TierPolicy,
              previous: tuple[NDArray[np.int8], NDArray[np.float64], bool],
              high_risk: float, counts: dict[str, Any]) -> dict[str, list[str]]:
    """Tier, value segment, RFM scores and segment, and action per customer (DESIGN.md §2).

    ``previous`` is :func:`score_store.previous_tiers`. Adds the code arrays to ``computed``
    and per-category counts to ``counts``; returns the names behind the codes.
    """
    prev_code, prev_since, live = previous
    since_last = summary.T - summary.recency
    churn = computed["churn_probability"]
    tiers = segments.assign_tiers(
        policy, days_since_first=summary.T, days_since_last=since_last, churn=churn,
        clv=computed["clv_12m"], was_high_value=prev_code == segments.TIERS.index("high_value"))
    kept = tiers == prev_code
    # Since when: carried forward while the tier holds; from this run when it changes. The
    # first run of a database has nothing to change from, so it records no transitions.
    computed["tier_since_days"] = np.where(kept, prev_since, 0.0)
    computed["previous_tier_code"] = prev_code.astype(np.float64)
    computed["tier_changed"] = (~kept & live).astype(np.float64)
    counts["tier_changes"] = int(np.count_nonzero(~kept & live))
    value = segments.value_segments(summary.historic_spend, policy)
    r, f, m = segments.rfm_scores(since_last, summary.frequency + 1, summary.historic_spend)
    rfm = segments.rfm_segments(r, f, m)
    actions = segments.recommended_actions(policy, tiers, value, churn >= high_risk)
    # Rank boundaries as values: a provisional tier between runs is placed with them.
    counts["cutoffs"] = segments.run_cutoffs(
        policy, days_since_last=since_last, occasions=summary.frequency + 1,
        spend=summary.historic_spend, clv=computed["clv_12m"], tiers=tiers, rfm=(r, f, m))
    names = {"tiers": list(segments.TIERS), "values": list(segments.VALUE_SEGMENTS),
             "rfm": list(segments.RFM_SEGMENTS), "actions": segments.action_names(policy)}
    for key, codes in (("tier_code", tiers), ("value_code", value), ("rfm_recency", r),
                       ("rfm_frequency", f), ("rfm_monetary", m), ("rfm_code", rfm),
                       ("action_code", actions)):
        computed[key] = codes.astype(np.float64)
    for label, codes, key in (("tiers", tiers, "tiers"), ("value_segments", value, "values"),
                              ("rfm_segments", rfm, "rfm"), ("actions", actions, "actions")):
        tally = np.bincount(codes, minlength=len(names[key]))
        counts[label] = {name: int(n) for name, n in zip(names[key], tally, strict=True)}
    # Per segment: customers, historic spend and predicted CLV (GET /v1/segments).
    counts["segments"] = {}
    for label, codes, key in (("tier", tiers, "tiers"), ("value_segment", value, "values"),
                              ("rfm_segment", rfm, "rfm")):
        k = len(names[key])
        n = np.bincount(codes, minlength=k)
        spend = np.bincount(codes, weights=summary.historic_spend, minlength=k)
        clv = np.bincount(codes, weights=np.nan_to_num(computed["clv_12m"]), minlength=k)
        counts["segments"][label] = {
            name: {"customers": int(n[j]), "historic_spend": round(float(spend[j]), 2),
                   "clv_12m": round(float(clv[j]), 2)} for j, name in enumerate(names[key])}
    # Tier transition matrix against the previous live run ("none": not scored there).
    if live:
        matrix: dict[str, dict[str, int]] = {}
        pairs = np.bincount((prev_code.astype(np.int64) + 1) * len(segments.TIERS) + tiers,
                            minlength=(len(segments.TIERS) + 1) * len(segments.TIERS))
        for j, n_pair in enumerate(pairs):
            if n_pair:
                before = "none" if j // len(segments.TIERS) == 0 else \
                    segments.TIERS[j // len(segments.TIERS) - 1]
                matrix.setdefault(before, {})[segments.TIERS[j % len(segments.TIERS)]] = \
                    int(n_pair)
        counts["tier_transition_matrix"] = matrix
    return names


def _scores(summary: score_store.Summary, hist: RFMHistogram, index: NDArray[np.intp],
            model: PurchaseModelT, gg: GammaGammaModel
            ) -> tuple[dict[str, NDArray[np.float64]], dict[str, Any]]:
    """Per-customer scores (arrays in summary order, see ``score_store.COMPUTED``) and totals.

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
