"""What the console's dashboard shows: the live run's picture of the base and the run history.

Reads only run records (a few kilobytes each): no per-customer rows, so the dashboard costs the
same with a thousand customers or ten million. Counts, segment totals, the tier transition
matrix and the CLV deciles were computed when the run was scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

RUN_HISTORY = 15

_LIVE = """
SELECT r.id, r.as_of, r.finished_at, r.churn_horizon_days, r.counts, r.models,
       r.diagnostics IS NOT NULL
FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id
"""

# Per run, only the figures the history table shows (not the whole models document).
_HISTORY = """
SELECT r.id, r.status, r.progress, r.as_of, r.created_at, r.started_at, r.finished_at, r.error,
       r.id = st.active_run_id, (r.counts ->> 'customers')::bigint,
       r.models ->> 'selected', r.models -> (r.models ->> 'selected') -> 'holdout',
       r.models -> 'churn' ->> 'used', r.models -> 'churn' -> 'validation' -> 'ml',
       r.models -> 'churn' -> 'validation' -> 'btyd_baseline', r.tier_policy_version,
       r.scores_retired_at, r.dry_run
FROM scoring_runs r LEFT JOIN scoring_state st ON true
ORDER BY r.id DESC LIMIT %s
"""

_HISTORY_KEYS = ("run_id", "status", "progress", "as_of", "created_at", "started_at",
                 "finished_at", "error", "live", "customers", "purchase_model", "holdout",
                 "churn_model", "churn_ml", "churn_baseline", "tier_policy_version",
                 "scores_retired_at", "dry_run")


def overview(conn: psycopg.Connection) -> dict[str, Any]:
    """The live run (or None) and the latest runs, newest first, in two statements."""
    row = conn.execute(_LIVE).fetchone()
    live = None
    if row is not None:
        run_id, as_of, finished, horizon, counts, models, has_plots = row
        live = {"run_id": run_id, "as_of": as_of, "scored_at": finished,
                "churn_horizon_days": horizon, "counts": counts or {}, "models": models or {},
                "has_diagnostics": bool(has_plots)}
    runs = [dict(zip(_HISTORY_KEYS, r, strict=True))
            for r in conn.execute(_HISTORY, (RUN_HISTORY,)).fetchall()]
    return {"live": live, "runs": runs}


def live_brief(conn: psycopg.Connection) -> dict[str, Any] | None:
    """Which run the scores come from (id, as_of, scored_at, customers), or None before one."""
    row = conn.execute(
        "SELECT r.id, r.as_of, r.finished_at, (r.counts ->> 'customers')::bigint"
        " FROM scoring_state st JOIN scoring_runs r ON r.id = st.active_run_id").fetchone()
    if row is None:
        return None
    return dict(zip(("run_id", "as_of", "scored_at", "customers"), row, strict=True))
