"""What the console's dashboard shows: the live run's picture of the base and the run history.

Reads only run records (a few kilobytes each): no per-customer rows, so the dashboard costs the
same with a thousand customers or ten million. Counts, segment totals, the tier transition
matrix and the CLV deciles were computed when the run was scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_service.storage import runs

if TYPE_CHECKING:
    import psycopg

RUN_HISTORY = 15

_LIVE = """
SELECT r.id, r.as_of, r.finished_at, r.churn_horizon_days, r.counts, r.models,
       r.diagnostics IS NOT NULL
FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id
"""

def overview(conn: psycopg.Connection) -> dict[str, Any]:
    """The live run (or None) and the latest runs, newest first, in two statements."""
    row = conn.execute(_LIVE).fetchone()
    live = None
    if row is not None:
        run_id, as_of, finished, horizon, counts, models, has_plots = row
        live = {"run_id": run_id, "as_of": as_of, "scored_at": finished,
                "churn_horizon_days": horizon, "counts": counts or {}, "models": models or {},
                "has_diagnostics": bool(has_plots)}
    history = [_history_row(r) for r in runs.list_runs(conn, limit=RUN_HISTORY)]
    return {"live": live, "runs": history}


def _history_row(run: dict[str, Any]) -> dict[str, Any]:
    """One row of the history table, from the run list."""
    churn = run["churn"] or {}
    validation = churn.get("validation") or {}
    return {
        "run_id": run["id"], "purchase_model": run["selected_model"],
        "holdout": None if run["holdout_mae"] is None else {"mae": run["holdout_mae"]},
        "churn_model": churn.get("used"), "churn_ml": validation.get("ml"),
        "churn_baseline": validation.get("btyd_baseline"),
        **{k: run[k] for k in ("status", "progress", "as_of", "created_at", "started_at",
                               "finished_at", "error", "live", "customers",
                               "tier_policy_version", "scores_retired_at", "dry_run")}}


def live_brief(conn: psycopg.Connection) -> dict[str, Any] | None:
    """Which run the scores come from (id, as_of, scored_at, customers), or None before one."""
    row = conn.execute(
        "SELECT r.id, r.as_of, r.finished_at, (r.counts ->> 'customers')::bigint"
        " FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
    if row is None:
        return None
    return dict(zip(("run_id", "as_of", "scored_at", "customers"), row, strict=True))
