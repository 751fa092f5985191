"""``run_scoring``: one scoring run from start to published, and what happens when it fails.

A run is recorded before any work starts; if anything fails (too little data, a fit that does
not converge, the database going away), the run is marked failed with the reason, its
unpublished partition is dropped and the previously published run stays live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from crm_service.errors import CrmError
from crm_service.platform.config import Settings
from crm_service.platform.db import DatabaseError, TransactionStatus
from crm_service.privacy.refs import ref_sql_params
from crm_service.scoring import dates
from crm_service.scoring.backtest import InsufficientHistoryError
from crm_service.scoring.inputs import RunConfig, RunInputs, ScoredRun, Summary
from crm_service.scoring.pipeline import score_base
from crm_service.storage import publishing, retention, runs
from crm_service.storage.run_session import LocalRunSession
from models._fitting import ConvergenceError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


class ScoringFailedError(CrmError):
    """A scoring run failed; the previous run stays live."""

    title = "Scoring run failed"


class RunEngine(Protocol):
    """Where a run's inputs come from and where its scores go (DESIGN.md §3, the two seams).

    :class:`~crm_service.storage.run_session.LocalRunSession` reads PostgreSQL and writes the
    run's partition from this process; an engine on Apache Spark implements the same three
    calls. Everything between them is :func:`~crm_service.scoring.pipeline.score_base`.
    """

    stage_seconds: dict[str, float]

    def __enter__(self) -> RunEngine: ...

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None: ...

    def load(self, as_of: date, config: RunConfig) -> RunInputs:
        """Summary, churn inputs, the live run's tiers and models, the tier policy."""

    def write_scores(self, run_id: int, as_of: date, base: Summary, scored: ScoredRun) -> None:
        """The run's rows in its own (detached) partition, indexed and analysed."""


def local_engine(conn: psycopg.Connection, settings: Settings) -> RunEngine:
    """The engine of this process: numpy beside PostgreSQL."""
    return LocalRunSession(conn, settings.timezone, settings.run_statement_timeout_ms)


@dataclass
class RunResult:
    """What ``crm-service score --json`` prints."""

    run_id: int
    as_of: date
    counts: dict[str, Any]
    models: dict[str, Any]
    seconds: float
    churn_horizon_days: int = 90
    retired_runs: list[int] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), "time_unit": "days",
                "churn_horizon_days": self.churn_horizon_days, "counts": self.counts,
                "models": self.models, "seconds": round(self.seconds, 3),
                "retired_runs": self.retired_runs, "dry_run": self.dry_run}


def run_scoring(conn: psycopg.Connection, settings: Settings, *, as_of: date,
                run_id: int | None = None, attempt: int = 1,
                churn_horizon_days: int | None = None, dry_run: bool = False,
                allow_stale: bool = False,
                progress: Callable[[str], None] | None = None) -> RunResult:
    """Score every customer as of ``as_of``, publish the run atomically, apply retention.

    ``run_id`` and ``attempt`` identify a run already claimed by a worker (its churn horizon,
    ``dry_run`` and ``allow_stale`` are the ones recorded with it); without them a new run is
    recorded with ``churn_horizon_days`` (default: the configured one).

    A ``dry_run`` computes and records everything, counts the events publishing would emit,
    and publishes nothing (no event, no tier history, the live run stays live). ``progress``
    is told each stage as it starts.

    Raises
    ------
    StaleScoringDateError
        If ``as_of`` is more than ``CRM_MAX_STALE_DAYS`` after the newest paid order (without
        ``allow_stale``): a new run is then not recorded at all, a claimed one is failed.
    InsufficientHistoryError, ScoringFailedError
        After recording the run as failed; the previous run stays live.
    RunTakenOverError
        If another worker took the run over meanwhile (nothing is published by this attempt).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("run_scoring commits its own transactions; pass an idle connection")
    started = time.perf_counter()
    claimed = run_id is not None
    if not claimed:  # refused before anything is recorded
        try:
            dates.check_run_date(conn, settings, as_of, allow_stale=allow_stale)
        finally:
            conn.rollback()
    run_id, config, dry_run, allow_stale = _start(conn, settings, as_of, run_id,
                                                  churn_horizon_days, dry_run, allow_stale)

    def stage(name: str) -> None:
        runs.set_progress(conn, run_id, attempt, name)
        if progress is not None:
            progress(name)

    try:
        with local_engine(conn, settings) as session:
            if claimed:  # queued earlier: the data may have gone stale since
                stage("checking the scoring date")
                dates.check_run_date(conn, settings, as_of, allow_stale=allow_stale)
                conn.commit()
            stage("summarising orders")
            inputs = session.load(as_of, config)
            stage("fitting models and scoring customers")
            scored = score_base(inputs, config)
            stage("writing scores")
            lap = time.perf_counter()
            session.write_scores(run_id, as_of, inputs.summary, scored)
            stages = {**session.stage_seconds, **scored.stage_seconds,
                      "write_scores": round(time.perf_counter() - lap, 3)}
            scored.counts["stage_seconds"] = stages
            lap = time.perf_counter()
            if dry_run:
                stage("counting what publishing would do (dry run)")
                publishing.finish_dry_run(conn, run_id, attempt, scored)
                stages["dry_run_report"] = round(time.perf_counter() - lap, 3)
            else:
                stage("publishing")
                publishing.publish(conn, run_id, attempt, as_of, scored,
                                   ref_params=_ref_params(settings))
                stages["publish"] = round(time.perf_counter() - lap, 3)
    except runs.RunTakenOverError:
        conn.rollback()
        raise
    except (InsufficientHistoryError, dates.StaleScoringDateError) as exc:
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
    runs.record_stage_seconds(conn, run_id, stages)
    seconds = time.perf_counter() - started
    if dry_run:
        log.info("scoring run %s (dry run) done, not published: %s customers in %.1f s",
                 run_id, scored.counts["customers"], seconds)
        return RunResult(run_id, as_of, scored.counts, scored.models, seconds,
                         config.churn_horizon_days, [], dry_run=True)
    log.info("scoring run %s published: %s customers in %.1f s", run_id,
             scored.counts["customers"], seconds)
    if progress is not None:
        progress("rendering plots and applying retention")
    _render_plots(conn, run_id)
    retired = _apply_retention(conn, settings)
    return RunResult(run_id, as_of, scored.counts, scored.models, seconds,
                     config.churn_horizon_days, retired)


def _start(conn: psycopg.Connection, settings: Settings, as_of: date, run_id: int | None,
           churn_horizon_days: int | None, dry_run: bool, allow_stale: bool
           ) -> tuple[int, RunConfig, bool, bool]:
    """Record a new run (or read a claimed one) and the configuration it runs with."""
    if run_id is None:
        horizon = churn_horizon_days or settings.churn_horizon_days
        run_id = runs.create_run(conn, as_of, settings.timezone, churn_horizon_days=horizon,
                                 dry_run=dry_run, allow_stale=allow_stale)
    else:
        record = runs.run_record(conn, run_id) or {}
        conn.commit()
        horizon = int(record.get("churn_horizon_days") or settings.churn_horizon_days)
        dry_run = bool(record.get("dry_run", dry_run))
        allow_stale = bool(record.get("allow_stale", allow_stale))
    return run_id, RunConfig(churn_horizon_days=horizon, churn_model=settings.churn_model,
                             churn_risk_medium=settings.churn_risk_medium,
                             churn_risk_high=settings.churn_risk_high), dry_run, allow_stale


def _render_plots(conn: psycopg.Connection, run_id: int) -> None:
    """Render and store the new run's plots, so no reader waits for matplotlib.

    Best effort: the run is already live, and a plot that is missing here is rendered on its
    first request instead.
    """
    from crm_service.scoring.plots import LANGUAGES, PLOTS, run_plot

    try:
        for name in PLOTS:
            for lang in LANGUAGES:
                run_plot(conn, run_id, name, lang)
        conn.commit()
    except Exception:
        conn.rollback()
        log.warning("scoring run %s: plots not rendered now; they will be on first request",
                    run_id, exc_info=True)


def _apply_retention(conn: psycopg.Connection, settings: Settings) -> list[int]:
    """Retire the score rows of runs past retention; best effort (the run is already live)."""
    try:
        return retention.apply_retention(conn, settings).retired
    except Exception:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        log.warning("retention after the run failed; `crm-service maintenance` retries it",
                    exc_info=True)
        return []


def _ref_params(settings: Settings) -> dict[str, bytes]:
    """Keys for each event's ``customer_ref`` (ConfigError without a server key)."""
    return ref_sql_params(settings)


def _release(conn: psycopg.Connection, run_id: int) -> None:
    try:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            conn.rollback()
        runs.release_run(conn, run_id)
    except DatabaseError:  # the session is gone, and its lock with it
        log.debug("could not release run %s (connection lost)", run_id)


def _record_failure(conn: psycopg.Connection, run_id: int, attempt: int, reason: str) -> None:
    """Mark the run failed and drop its unpublished partition, or log why that was impossible.

    If the database itself is gone the original error goes on; the run's ownership lock went
    with the session, so the next worker (or ``crm-service score``) marks it failed, and
    retention drops what it left.
    """
    try:
        conn.rollback()
        if runs.fail_run(conn, run_id, attempt, reason):
            publishing.drop_unpublished_partition(conn, run_id)
            conn.commit()
    except DatabaseError:
        log.exception("could not record the failure of scoring run %s", run_id)
