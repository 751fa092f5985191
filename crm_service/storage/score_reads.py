"""Reads of published runs (SQL): one customer's live scores, a run's rows, plots and plot data.

Every read names one run (the live one, taken once), so a reader never sees a mix of runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

# The columns of a run's score rows (its partition of customer_scores), after run_id.
SCORE_COLUMNS = (
    "customer_id", "frequency", "recency_days", "t_days", "monetary_value", "historic_spend",
    "first_purchase", "last_purchase", "avg_days_between_orders", "p_alive",
    "expected_purchases_30", "expected_purchases_90", "expected_purchases_365",
    "expected_next_order", "expected_spend", "clv_12m", "churn_probability", "churn_risk",
    "tier", "value_segment", "rfm_recency", "rfm_frequency", "rfm_monetary", "rfm_segment",
    "recommended_action", "tier_since", "purchases_365_p10", "purchases_365_p90",
    "spend_365_p10", "spend_365_p90", "p_alive_note",
)

# What a run computes per customer, sent back in row order of run_summary. NaN in


# Whether the score row is of a customer merged since the run (an alias): tools get the
# survivor only.
MERGED_SQL = ("EXISTS (SELECT 1 FROM customers m WHERE m.customer_id = s.customer_id"
                  " AND m.merged_into IS NOT NULL)")


def customer_scores(conn: psycopg.Connection, customer_id: str) -> dict[str, Any] | None:
    """One customer's scores in the live run (one statement: never a mix of runs).

    Returns None when no run is live; ``{"run_id": ..., "scores": None}`` when the live run
    has no scores for the customer.
    """
    cols = ", ".join(f"s.{c}" for c in SCORE_COLUMNS)
    row = conn.execute(
        f"SELECT r.id, r.as_of, r.finished_at, r.churn_horizon_days, s.customer_id IS NOT NULL,"
        f" {cols} FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id"
        " LEFT JOIN customer_scores s ON s.run_id = r.id AND s.customer_id = %s",
        (customer_id,)).fetchone()
    if row is None:
        return None
    run = {"run_id": row[0], "as_of": row[1], "scored_at": row[2],
           "churn_horizon_days": row[3]}
    if not row[4]:
        return {**run, "scores": None}
    scores = dict(zip(SCORE_COLUMNS, row[5:], strict=True))
    for key in ("monetary_value", "historic_spend"):
        scores[key] = float(scores[key])
    return {**run, "scores": scores}


def iter_run_scores(conn: psycopg.Connection, run_id: int,
                    batch: int = 20_000) -> Iterator[tuple[Any, ...]]:
    """Stream one run's score rows (server-side cursor), ordered by customer id.

    Take the run id from :func:`active_run` once and pass it here, so parameters and rows come
    from the same run even if another run is published meanwhile.
    """
    with conn.cursor(name="run_scores") as cur:
        cur.itersize = batch
        cur.execute(
            "SELECT customer_id, frequency, recency_days, t_days, monetary_value, p_alive,"
            " clv_12m, churn_probability, churn_risk, tier, value_segment, rfm_segment,"
            " recommended_action, p_alive_note, spend_365_p10, spend_365_p90"
            " FROM customer_scores s WHERE run_id = %s AND NOT " + MERGED_SQL +
            " ORDER BY customer_id", (run_id,))
        yield from cur


def run_diagnostics(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """A run's plot data and models, or None when the run has none."""
    row = conn.execute("SELECT diagnostics, models FROM scoring_runs WHERE id = %s",
                       (run_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return {**row[0], "models": row[1]}


def stored_plot(conn: psycopg.Connection, run_id: int, name: str, lang: str) -> bytes | None:
    """A rendered plot of a run (SVG), or None when it has not been rendered yet."""
    row = conn.execute("SELECT svg FROM run_plots WHERE run_id = %s AND name = %s"
                       " AND lang = %s", (run_id, name, lang)).fetchone()
    return bytes(row[0]) if row else None


def store_plot(conn: psycopg.Connection, run_id: int, name: str, lang: str,
               svg: bytes) -> None:
    """Keep a rendered plot (the first one stored wins: renders of one run are identical)."""
    conn.execute("INSERT INTO run_plots (run_id, name, lang, svg) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING", (run_id, name, lang, svg))
