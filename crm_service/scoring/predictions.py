"""What-if predictions from the live run's parameters (``POST /v1/predictions``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from crm_service.errors import NotFoundError, ValidationError
from crm_service.storage import runs
from models.clv import customer_lifetime_value
from models.gamma_gamma import GammaGammaModel
from models.purchase import purchase_model
from models.rfm import RFMInputError, check_rfm

if TYPE_CHECKING:
    import psycopg

MAX_CASES = 1000


def predict(conn: psycopg.Connection, cases: list[dict[str, Any]],
            horizons: list[int]) -> dict[str, Any]:
    """Predict for hypothetical customers given frequency, recency, T (days) and spend."""
    if not cases or len(cases) > MAX_CASES:
        raise ValidationError(f"send 1 to {MAX_CASES} cases")
    run = runs.active_run(conn)
    if run is None:
        raise NotFoundError("no scoring run has been published yet; run `crm-service score`")
    models = run["models"]
    model = purchase_model(models["selected"], models[models["selected"]]["params"])
    spend_model = GammaGammaModel.from_params(models["gamma_gamma"]["params"])
    try:
        x, t_x, big_t = check_rfm([c["frequency"] for c in cases],
                                  [c["recency"] for c in cases], [c["T"] for c in cases])
    except RFMInputError as exc:
        raise ValidationError(f"impossible customer history: {exc}") from None
    # Purchase occasions are calendar days: x repeat days after the first need x days at least.
    short = np.flatnonzero(t_x < x)
    if short.size:
        raise ValidationError(f"impossible customer history: case {short[0]} has "
                              f"{int(x[short[0]])} repeat purchase days within "
                              f"{t_x[short[0]]:g} days (recency must be >= frequency)")
    alive = model.probability_alive(x, t_x, big_t)
    expected = {h: model.conditional_expected_purchases(h, x, t_x, big_t) for h in horizons}
    # Without a known spend (0), the population mean from Gamma-Gamma is the best guess.
    m = np.array([float(c.get("monetary_value") or 0.0) for c in cases])
    spend = spend_model.conditional_expected_spend(np.where(m > 0, x, 0.0), m)
    clv = customer_lifetime_value(model, x, t_x, big_t, spend)
    wait = model.median_time_to_next_purchase(x, t_x, big_t)
    # The ML churn model needs a customer's whole history; for a what-if history the run's
    # BTYD model gives P(no purchase in H), the baseline the churn model is judged against.
    horizon = int(run.get("churn_horizon_days") or 90)
    quiet = model.probability_no_purchases(horizon, x, t_x, big_t)
    return {
        "run_id": run["run_id"], "model": models["selected"], "time_unit": "days",
        "predictions": [{
            **cases[i],
            "p_alive": float(alive[i]),
            "expected_purchases": {str(h): float(expected[h][i]) for h in horizons},
            "median_days_to_next_purchase_if_alive": (
                float(np.round(wait[i], 3)) if np.isfinite(wait[i]) else None),
            "expected_spend": float(spend[i]),
            "clv_12m": float(clv[i]),
            "p_no_purchase_btyd": float(quiet[i]),
        } for i in range(len(cases))],
        "churn_horizon_days": horizon,
    }
