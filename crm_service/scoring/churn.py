"""Churn scoring within a run: time-split training, out-of-time validation, model choice.

With ``A`` = as_of and ``H`` the horizon (DESIGN.md §2):

- **validation**: the classifier is trained on features as of ``A − 2H − k`` with labels from
  the H days after each cut-off, for ``k`` in 0, H/3, 2H/3, H (windows stacked: more data and
  more than one season), and judged on features as of ``A − H`` against what customers did in
  ``(A − H, A]`` (out of time, like its real use). The BTYD baseline, P(no purchase in H) from
  the run's selected purchase model fitted as of ``A − H``, is judged on the same customers.
- **choice**: the one with the lower Brier score on that window scores the customers (Brier is
  a proper score: it rewards both ranking and calibration); both sets of metrics are recorded.
- **final model**: retrained the same way on the windows ending at ``A`` (cut-offs
  ``A − H − k``; the latest labels are ``(A − H, A]``), then applied to features as of ``A``.

Large bases train on a fixed hash sample of customers (about 200k rows in all).

Too little history (under 2H) or too few churners or non-churners in a window: the baseline
scores, and the run says why.

No I/O here: the engine loads the raw aggregates of every cut-off :func:`cutoffs` names into
:class:`~crm_service.scoring.inputs.ChurnInputs` before the pipeline starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crm_service.scoring.inputs import RAW_CHURN as RAW
from crm_service.scoring.inputs import ChurnInputs
from models import churn as churn_model
from models._fitting import ConvergenceError
from models.beta_geo import BetaGeoModel
from models.purchase import PurchaseModel
from models.rfm import compress_with_index

PurchaseModelT = PurchaseModel

log = logging.getLogger(__name__)

MIN_CLASS = 50  # churners and non-churners each, per window
MIN_CUSTOMERS = 500
WINDOW_OFFSETS = (0.0, 1 / 3, 2 / 3, 1.0)  # training cut-offs, in horizons before the latest
MIN_WINDOW_HISTORY = 30  # days of history a training cut-off needs


@dataclass
class ChurnResult:
    """Per-customer churn probability (summary order) and what the run records about it."""

    probability: NDArray[np.float64]
    info: dict[str, Any]
    artifact: tuple[bytes, dict[str, Any]] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def wanted(policy: str, span_days: int, horizon: int) -> bool:
    """Whether a run trains a churn model at all (and so needs :class:`ChurnInputs`)."""
    return policy != "baseline" and span_days >= 2 * horizon


def sample_share(customers: int) -> float:
    """Share of customers the training windows keep (about MAX_TRAINING_ROWS rows in all)."""
    return min(1.0, churn_model.MAX_TRAINING_ROWS / len(WINDOW_OFFSETS) / max(customers, 1))


def _training_cutoffs(end: date, horizon: int, first_day: date) -> list[date]:
    """Cut-offs of the training windows whose labels end by ``end``: ``end − H − k``."""
    out = []
    for k in WINDOW_OFFSETS:
        cutoff = end - timedelta(days=horizon + round(k * horizon))
        if (cutoff - first_day).days >= MIN_WINDOW_HISTORY:
            out.append(cutoff)
    return out


def cutoffs(as_of: date, horizon: int, span_days: int) -> list[date]:
    """Every cut-off whose (sampled) window :func:`score_churn` reads, oldest first."""
    first_day = as_of - timedelta(days=span_days)
    val_cut = as_of - timedelta(days=horizon)
    wanted_days = {val_cut, *_training_cutoffs(val_cut, horizon, first_day),
                   *_training_cutoffs(as_of, horizon, first_day)}
    return sorted(wanted_days)


def btyd_outputs(model: PurchaseModelT, x: NDArray[np.float64], t_x: NDArray[np.float64],
                 big_t: NDArray[np.float64], horizon: int) -> NDArray[np.float64]:
    """P(alive), E[purchases in H] and P(no purchase in H), one column each.

    Computed once per distinct (x, t_x, T) and spread back.
    """
    hist, index = compress_with_index(x, t_x, big_t)
    hx, ht, hT = hist.frequency, hist.recency, hist.T
    cols = (model.probability_alive(hx, ht, hT),
            model.conditional_expected_purchases(horizon, hx, ht, hT),
            model.probability_no_purchases(horizon, hx, ht, hT))
    return np.stack([c[index] for c in cols], axis=1)


def feature_matrix(raw: NDArray[np.float32], btyd: NDArray[np.float64]) -> NDArray[np.float32]:
    """The model's features (order of ``models.churn.FEATURES``) from raw SQL aggregates."""
    col = {name: raw[:, j] for j, name in enumerate(RAW)}
    x, t_x, big_t = col["frequency"], col["recency"], col["T"]
    since_last = big_t - t_x
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_interval = np.where(x > 0, t_x / x, np.nan)
        overdue = since_last / mean_interval
    derived = {
        "days_since_last": since_last, "mean_interval": mean_interval, "overdue_ratio": overdue,
        "spend_trend": np.log1p(col["spend_90"]) - np.log1p(col["spend_prev_90"]),
        "mean_occasion_value": col["historic_spend"] / (x + 1),
        "p_alive": btyd[:, 0], "expected_purchases_h": btyd[:, 1],
        "p_no_purchase_h": btyd[:, 2],
    }
    out = np.empty((raw.shape[0], len(churn_model.FEATURES)), dtype=np.float32)
    for i, name in enumerate(churn_model.FEATURES):
        out[:, i] = derived[name] if name in derived else col[name]
    return out


class _Windows:
    """Training and validation windows of one run, each computed once (they overlap)."""

    def __init__(self, raw: dict[date, NDArray[np.float32]], horizon: int, first_day: date,
                 fallback: PurchaseModelT) -> None:
        self.raw, self.horizon, self.first_day = raw, horizon, first_day
        self.fallback = fallback
        self._cache: dict[date, tuple[NDArray[np.float32], NDArray[np.bool_], str] | None] = {}

    def at(self, cutoff: date) -> tuple[NDArray[np.float32], NDArray[np.bool_], str] | None:
        """Features and labels of the (sampled) customers who had bought by ``cutoff``.

        The BTYD features come from the run's model type fitted as of ``cutoff`` if it
        converges there, else BG/NBD. If neither does, None: the window is not used (the
        run's own fit has seen the orders after ``cutoff``, and would leak them).
        """
        if cutoff not in self._cache:
            self._cache[cutoff] = self._load(cutoff)
        return self._cache[cutoff]

    def _load(self, cutoff: date) -> tuple[NDArray[np.float32], NDArray[np.bool_], str] | None:
        raw = self.raw[cutoff]
        j = RAW.index
        x, t_x, big_t = (raw[:, j(c)].astype(np.float64) for c in ("frequency", "recency", "T"))
        for cls, initial in ((type(self.fallback), self.fallback.params_), (BetaGeoModel, None)):
            try:
                btyd = cls().fit(x, t_x, big_t, initial=initial, standard_errors=False)
            except (ConvergenceError, ValueError) as exc:  # e.g. Pareto/NBD, young history
                log.info("churn features as of %s: %s; trying the next model", cutoff, exc)
                continue
            churned = raw[:, j("future")] == 0
            features = feature_matrix(raw, btyd_outputs(btyd, x, t_x, big_t, self.horizon))
            return features, churned, f"{cls.label} fitted"
        log.info("churn window as of %s skipped: no BTYD model converged there", cutoff)
        return None

    def stacked(self, end: date) -> tuple[NDArray[np.float32], NDArray[np.bool_], list[str]]:
        """Training windows whose labels end by ``end``: cut-offs ``end − H − k``, stacked."""
        xs, ys, cuts = [], [], []
        for cutoff in _training_cutoffs(end, self.horizon, self.first_day):
            window = self.at(cutoff)
            if window is None:
                continue
            x, y, _ = window
            xs.append(x)
            ys.append(y)
            cuts.append(cutoff.isoformat())
        if not xs:
            return (np.empty((0, len(churn_model.FEATURES)), dtype=np.float32),
                    np.empty(0, dtype=bool), cuts)
        return np.vstack(xs), np.concatenate(ys), cuts


def _class_problem(churned: NDArray[np.bool_], label: str) -> str | None:
    n, pos = churned.size, int(churned.sum())
    if n < MIN_CUSTOMERS:
        return f"{label}: {n} customers (need {MIN_CUSTOMERS})"
    if pos < MIN_CLASS or n - pos < MIN_CLASS:
        return (f"{label}: {pos} churners and {n - pos} non-churners "
                f"(need {MIN_CLASS} of each)")
    return None


def score_churn(inputs: ChurnInputs | None, *, as_of: date, horizon: int,
                span_days: int, model_name: str, model: PurchaseModelT,
                baseline: NDArray[np.float64], policy: str = "auto",
                seed: int = 0) -> ChurnResult:
    """Train, validate and choose; return P(churn) for the customers of the run's summary.

    ``baseline`` is P(no purchase in H) of the run's selected purchase model at ``as_of``, in
    summary order. ``policy`` (``CRM_CHURN_MODEL``): ``auto`` uses whichever validates better,
    ``ml`` the trained model whenever there is data to train it, ``baseline`` never trains.
    ``inputs`` are the raw aggregates at :func:`cutoffs` (None when :func:`wanted` is
    false).
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    info: dict[str, Any] = {"horizon_days": horizon, "baseline_model": model_name,
                            "criterion": "brier"}

    def use_baseline(reason: str) -> ChurnResult:
        info.update({"used": "btyd_baseline", "reason": reason})
        timings["churn_total"] = time.perf_counter() - started
        info["stage_seconds"] = {k: round(v, 3) for k, v in timings.items()}
        if not np.all(np.isfinite(baseline)):
            raise ValueError("the BTYD churn baseline is not finite for "
                             f"{int(np.count_nonzero(~np.isfinite(baseline)))} customers")
        return ChurnResult(np.clip(baseline, 0.0, 1.0), info, None, timings)

    info["policy"] = policy
    if policy == "baseline":
        return use_baseline("CRM_CHURN_MODEL=baseline")
    if span_days < 2 * horizon:
        return use_baseline(f"{span_days} days of history; training and validating a churn "
                            f"model over {horizon} days needs {2 * horizon}")
    if inputs is None:
        raise ValueError("churn inputs were not loaded for a run that trains a churn model")
    val_cut = as_of - timedelta(days=horizon)
    share = inputs.share
    windows = _Windows(inputs.windows, horizon, as_of - timedelta(days=span_days), model)
    x_fit, y_fit, fit_cuts = windows.stacked(val_cut)
    validation = windows.at(val_cut)
    if validation is None:
        return use_baseline(f"no BTYD model converged on the history before {val_cut}, so "
                            "the churn model could not be validated")
    x_val, y_val, val_btyd = validation
    info.update({"validation_cutoff": val_cut.isoformat(), "validation_training_cutoffs":
                 fit_cuts, "btyd_features_at_validation": val_btyd,
                 "customer_share": round(share, 4)})
    timings["churn_validation_features"] = time.perf_counter() - started
    problems = [p for p in (_class_problem(y_fit, f"training windows before {val_cut}"),
                            _class_problem(y_val, f"validation window to {as_of}")) if p]
    if problems:
        return use_baseline("too little data to train a churn model: " + "; ".join(problems))

    candidate = churn_model.fit(x_fit, y_fit, seed)
    p_val = churn_model.predict(candidate, x_val)
    base_val = x_val[:, churn_model.FEATURES.index("p_no_purchase_h")]
    ml_metrics, base_metrics = churn_model.metrics(y_val, p_val), churn_model.metrics(y_val,
                                                                                       base_val)
    info.update({"validation": {"ml": ml_metrics, "btyd_baseline": base_metrics}})
    timings["churn_validation"] = time.perf_counter() - started
    ml_brier, base_brier = float(ml_metrics["brier"] or 0.0), float(base_metrics["brier"] or 0.0)
    if policy == "auto" and ml_brier >= base_brier:
        return use_baseline("the BTYD baseline validated better (Brier "
                            f"{base_metrics['brier']:.4f} vs {ml_metrics['brier']:.4f})")

    x_train, y_train, train_cuts = windows.stacked(as_of)
    final = churn_model.fit(x_train, y_train, seed)
    raw_now = inputs.now
    j = RAW.index
    x, t_x, big_t = (raw_now[:, j(c)].astype(np.float64) for c in ("frequency", "recency", "T"))
    features_now = feature_matrix(raw_now, btyd_outputs(model, x, t_x, big_t, horizon))
    del x, t_x, big_t, x_fit, y_fit, x_train  # peak memory: only what predict needs
    probability = churn_model.predict(final, features_now)
    if not np.all(np.isfinite(probability)):
        return use_baseline("the churn model produced non-finite probabilities for "
                            f"{int(np.count_nonzero(~np.isfinite(probability)))} customers")
    artifact = churn_model.dumps(final)
    why = ("the ML model validated better" if ml_brier < base_brier
           else "CRM_CHURN_MODEL=ml, although the baseline validated better")
    info.update({"used": "ml", "reason": f"{why} (Brier {ml_brier:.4f} vs {base_brier:.4f})",
                 "training_cutoffs": train_cuts, "training_rows": int(y_train.size),
                 "training_churn_rate": float(y_train.mean()),
                 "artifact": {k: v for k, v in artifact[1].items() if k != "features"}})
    timings["churn_total"] = time.perf_counter() - started
    info["stage_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return ChurnResult(probability, info, artifact, timings)
