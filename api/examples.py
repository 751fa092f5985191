"""Example bodies for the OpenAPI document (shown in the docs page next to each operation)."""

from __future__ import annotations

BATCH_RESULT = {
    "results": [
        {"index": 0, "outcome": "inserted"},
        {"index": 1, "outcome": "updated"},
        {"index": 2, "outcome": "rejected",
         "errors": {"amount": "must be >= 0 with at most 2 decimals"}},
    ],
    "totals": {"inserted": 1, "updated": 1, "duplicate": 0, "rejected": 1},
}

_MODELS = {
    "selected": "bgnbd",
    "bgnbd": {"params": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
              "standard_errors": {"r": 0.0125, "alpha": 0.378, "a": 0.186, "b": 0.705},
              "log_likelihood": -9582.4, "converged": True,
              "holdout": {"mae": 0.61, "predicted": 1788.2, "actual": 1788}},
    "gamma_gamma": {"params": {"p": 6.25, "q": 3.74, "v": 15.45}},
    "churn": {"model": "ml", "reason": "the ML model validated better (Brier 0.0881 vs 0.0900)",
              "risk_thresholds": {"medium": 0.5, "high": 0.8}},
    "tier_policy_version": 1,
}

RUN = {
    "run_id": 12, "status": "succeeded", "dry_run": False, "allow_stale": False,
    "progress": "published", "as_of": "1998-06-30",
    "time_unit": "days", "timezone": "UTC", "churn_horizon_days": 90,
    "created_at": "2026-11-22T02:00:00+00:00", "started_at": "2026-11-22T02:00:01+00:00",
    "finished_at": "2026-11-22T02:00:07+00:00", "error": None, "previous_run_id": 11,
    "scores_retired_at": None,
    "counts": {"customers": 2357, "repeat_buyers": 1114,
               "tiers": {"new": 0, "active": 615, "dormant": 1630, "high_value": 112},
               "churn_risk": {"low": 402, "medium": 215, "high": 1740}},
    "models": _MODELS,
}

QUEUED_RUN = {**RUN, "status": "queued", "progress": None, "started_at": None,
              "finished_at": None, "counts": None, "models": None, "previous_run_id": None}

RUN_LIST = {
    "items": [{
        "run_id": 12, "status": "succeeded", "dry_run": False, "live": True,
        "as_of": "1998-06-30", "created_at": "2026-11-22T02:00:00+00:00",
        "started_at": "2026-11-22T02:00:01+00:00", "finished_at": "2026-11-22T02:00:07+00:00",
        "seconds": 6.2, "customers": 2357, "selected_model": "bgnbd", "holdout_mae": 0.61,
        "churn": {"used": "ml", "reason": "the ML model validated better (Brier 0.0881 vs "
                  "0.0900)", "horizon_days": 90,
                  "validation": {"ml": {"roc_auc": 0.83, "brier": 0.0881},
                                 "btyd_baseline": {"roc_auc": 0.8, "brier": 0.09}}},
        "stage_seconds": {"summary": 0.4, "fits": 1.9, "churn": 2.1, "publish": 0.3},
        "scores_kept": True, "scores_retired_at": None, "previous_run_id": 11, "error": None,
        "dry_run_report": None}],
    "next_cursor": "cnVuOjEy",
}

PREDICTIONS = {
    "run_id": 12, "model": "bgnbd", "time_unit": "days",
    "predictions": [{"frequency": 3, "recency": 120, "T": 200, "monetary_value": 35.5,
                     "p_alive": 0.81, "expected_purchases": {"30": 0.31, "90": 0.88},
                     "median_days_to_next_purchase_if_alive": 41.0, "expected_spend": 36.9,
                     "clv_12m": 118.4, "p_no_purchase_btyd": 0.52}],
    "churn_horizon_days": 90,
}

CUSTOMER_SCORES = {
    "customer_id": "C-10023", "run_id": 12, "as_of": "1998-06-30",
    "scored_at": "2026-11-22T02:00:07+00:00", "churn_horizon_days": 90, "frequency": 6,
    "recency_days": 480, "t_days": 520, "monetary_value": 41.2, "historic_spend": 290.5,
    "first_purchase": "1997-01-26", "last_purchase": "1998-05-21",
    "avg_days_between_orders": 80.0, "p_alive": 0.93, "expected_purchases_30": 0.3,
    "expected_purchases_90": 0.86, "expected_purchases_365": 3.1,
    "expected_next_order": "1998-07-28", "expected_spend": 40.7, "clv_12m": 118.3,
    "churn_probability": 0.31, "churn_risk": "low", "tier": "high_value",
    "value_segment": "high", "rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 5,
    "rfm_segment": "champions", "recommended_action": "vip_care", "tier_since": "1998-03-31",
}

AUDIENCE_PAGE = {
    "run_id": 12, "as_of": "1998-06-30", "sort": "-clv_12m",
    "items": [{"customer_id": "C-10023", "tier": "dormant", "tier_since": "1998-03-31",
               "value_segment": "high", "rfm_segment": "at_risk",
               "recommended_action": "vip_win_back", "churn_probability": 0.93,
               "churn_risk": "high", "clv_12m": 12.4, "p_alive": 0.21,
               "expected_purchases_90": 0.04, "frequency": 7,
               "last_purchase": "1997-09-02", "historic_spend": 812.3}],
    "next_cursor": "WzEyLCJDLTEwMDIzIiwiLWNsdl8xMm0iLCIxMi40Il0",
}
