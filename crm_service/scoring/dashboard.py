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

def overview(conn: psycopg.Connection) -> dict[str, Any]:
    """The live run (or None) and the latest runs, newest first, in two statements."""
    run = runs.live_run(conn)
    live = None
    if run is not None:
        live = {"run_id": run.run_id, "as_of": run.as_of, "scored_at": run.scored_at,
                "churn_horizon_days": run.churn_horizon_days, "counts": run.counts,
                "models": run.models, "has_diagnostics": run.has_diagnostics}
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
    run = runs.live_run(conn)
    if run is None:
        return None
    return {"run_id": run.run_id, "as_of": run.as_of, "scored_at": run.scored_at,
            "customers": run.customers}
