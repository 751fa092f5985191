"""SQL for scoring runs: the per-customer summary, run records, score rows and publishing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

# Purchase occasions (DESIGN.md §2): a customer's paid orders on one calendar day in the
# reporting zone are one occasion, their amounts summed; cancelled and refunded orders do not
# count. Only orders up to the end of `as_of` (local) are seen.
_SUMMARY = """
WITH occasions AS (
    SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, sum(amount) AS amount
    FROM orders
    WHERE status = 'paid' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
    GROUP BY customer_id, day
),
numbered AS (
    SELECT customer_id, day, amount,
           row_number() OVER (PARTITION BY customer_id ORDER BY day) AS k
    FROM occasions
)
SELECT customer_id,
       count(*) - 1                                   AS frequency,
       max(day) - min(day)                            AS recency,
       {as_of}::date - min(day)                       AS t,
       coalesce(avg(amount) FILTER (WHERE k > 1), 0)  AS monetary_value,
       sum(amount)                                    AS historic_spend,
       min(day)                                       AS first_purchase,
       max(day)                                       AS last_purchase
FROM numbered
GROUP BY customer_id
ORDER BY customer_id
"""


@dataclass
class Summary:
    """Per-customer RFM summary as numpy arrays (one entry per customer, sorted by id)."""

    customer_id: list[str]
    frequency: NDArray[np.float64]
    recency: NDArray[np.float64]
    T: NDArray[np.float64]  # noqa: N815 - the literature's notation
    monetary_value: NDArray[np.float64]
    historic_spend: NDArray[np.float64]
    first_purchase: list[date]
    last_purchase: list[date]

    @property
    def size(self) -> int:
        """Number of customers."""
        return len(self.customer_id)


def load_summary(conn: psycopg.Connection, as_of: date, timezone: str) -> Summary:
    """Compute the summary in PostgreSQL and read it with COPY into numpy.

    Only one row per customer leaves the database, as CSV parsed by pandas' C reader: a
    million customers arrive in about a second, where row-by-row fetching took six.
    """
    import pandas as pd

    buf = io.BytesIO()
    with conn.cursor() as cur:
        # COPY cannot take server-side parameters; the values are bound client-side.
        query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(
            sql.SQL(_SUMMARY).format(as_of=sql.Literal(as_of), tz=sql.Literal(timezone)))
        with cur.copy(query) as copy:
            for chunk in copy:
                buf.write(chunk)
    buf.seek(0)
    names = ["customer_id", "frequency", "recency", "t", "monetary_value", "historic_spend",
             "first_purchase", "last_purchase"]
    if buf.getbuffer().nbytes == 0:
        frame = pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    else:
        frame = pd.read_csv(buf, header=None, names=names, dtype={"customer_id": str},
                            keep_default_na=False)
    as_float = {n: frame[n].to_numpy(dtype=np.float64) for n in names[1:6]}
    return Summary(
        customer_id=frame["customer_id"].tolist(),
        frequency=as_float["frequency"],
        recency=as_float["recency"],
        T=as_float["t"],
        monetary_value=as_float["monetary_value"],
        historic_spend=as_float["historic_spend"],
        first_purchase=[date.fromisoformat(d) for d in frame["first_purchase"]],
        last_purchase=[date.fromisoformat(d) for d in frame["last_purchase"]],
    )


def create_run(conn: psycopg.Connection, as_of: date, timezone: str, *,
               status: str = "running") -> int:
    """Record a new run (running, or queued for a worker); committed at once."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO scoring_runs (status, as_of, timezone, started_at, heartbeat_at)"
            " VALUES (%s, %s, %s, CASE WHEN %s = 'running' THEN now() END, now())"
            " RETURNING id", (status, as_of, timezone, status)).fetchone()
    assert row is not None
    return int(row[0])


class RunTakenOverError(RuntimeError):
    """Another worker took this run over (this attempt's heartbeat had gone stale)."""


def claim_queued_run(conn: psycopg.Connection, stale_minutes: float = 30.0
                     ) -> tuple[int, date, int] | None:
    """Take the oldest queued run for this worker (SKIP LOCKED: workers never share a run).

    A run still marked running whose heartbeat is older than ``stale_minutes`` lost its worker
    (a crash rolls back its unpublished scores) and is taken over too.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE scoring_runs SET status = 'running', started_at = now(), heartbeat_at = now(),"
            " progress = 'starting', attempt = attempt + 1 WHERE id = (SELECT id FROM scoring_runs"
            " WHERE status = 'queued' OR (status = 'running'"
            "   AND heartbeat_at < now() - make_interval(secs => %s * 60))"
            " ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)"
            " RETURNING id, as_of, attempt", (stale_minutes,)).fetchone()
    return (int(row[0]), row[1], int(row[2])) if row else None


def set_progress(conn: psycopg.Connection, run_id: int, attempt: int, stage: str) -> None:
    """Record the stage a run has reached (readable while it runs); also its heartbeat.

    Raises
    ------
    RunTakenOverError
        If another worker has claimed the run since this attempt started.
    """
    with conn.transaction():
        cur = conn.execute(
            "UPDATE scoring_runs SET progress = %s, heartbeat_at = now()"
            " WHERE id = %s AND attempt = %s AND status = 'running'", (stage, run_id, attempt))
        if cur.rowcount == 0:
            raise RunTakenOverError(f"scoring run {run_id} was taken over by another worker")


def fail_run(conn: psycopg.Connection, run_id: int, attempt: int, reason: str) -> None:
    """Mark this attempt's run failed with its reason; the live run is untouched.

    Does nothing if the run is no longer this attempt's (taken over, or already finished).
    """
    with conn.transaction():
        conn.execute("UPDATE scoring_runs SET status = 'failed', error = %s, finished_at = now()"
                     " WHERE id = %s AND attempt = %s AND status = 'running'",
                     (reason, run_id, attempt))


SCORE_COLUMNS = (
    "customer_id", "frequency", "recency_days", "t_days", "monetary_value", "historic_spend",
    "first_purchase", "last_purchase", "avg_days_between_orders", "p_alive",
    "expected_purchases_30", "expected_purchases_90", "expected_purchases_365",
    "expected_next_order", "expected_spend", "clv_12m",
)


def publish_run(conn: psycopg.Connection, run_id: int, attempt: int, rows: Iterable[tuple],
                counts: dict[str, Any], models: dict[str, Any],
                diagnostics: dict[str, Any] | None = None) -> None:
    """Write the run's scores with COPY and make it the live run, all in one transaction.

    Readers switch from the previous run to this one at commit: they never see a mix. The run
    row is locked first, and only the attempt that owns it may publish.

    Raises
    ------
    RunTakenOverError
        If another worker has claimed the run since this attempt started.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT 1 FROM scoring_runs WHERE id = %s AND attempt = %s"
                    " AND status = 'running' FOR UPDATE", (run_id, attempt))
        if cur.fetchone() is None:
            raise RunTakenOverError(f"scoring run {run_id} was taken over by another worker")
        columns = ", ".join(SCORE_COLUMNS)
        with cur.copy(f"COPY customer_scores (run_id, {columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((run_id, *row))
        cur.execute(
            "UPDATE scoring_runs SET status = 'succeeded', finished_at = now(), counts = %s,"
            " models = %s, progress = 'published' WHERE id = %s",
            (json.dumps(counts), json.dumps(models), run_id))
        if diagnostics is not None:
            store_diagnostics(conn, run_id, diagnostics)
        cur.execute("UPDATE scoring_state SET active_run_id = %s", (run_id,))


def active_run(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The live run's record, or None before the first successful run."""
    row = conn.execute(
        "SELECT r.id, r.status, r.as_of, r.time_unit, r.timezone, r.created_at, r.finished_at,"
        " r.counts, r.models FROM scoring_state s JOIN scoring_runs r ON r.id = s.active_run_id"
    ).fetchone()
    if row is None:
        return None
    keys = ("run_id", "status", "as_of", "time_unit", "timezone", "created_at", "finished_at",
            "counts", "models")
    return dict(zip(keys, row, strict=True))


def run_record(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """One run's record by id."""
    row = conn.execute(
        "SELECT id, status, progress, as_of, time_unit, timezone, created_at, started_at,"
        " finished_at, error, counts, models FROM scoring_runs WHERE id = %s",
        (run_id,)).fetchone()
    if row is None:
        return None
    keys = ("run_id", "status", "progress", "as_of", "time_unit", "timezone", "created_at",
            "started_at", "finished_at", "error", "counts", "models")
    return dict(zip(keys, row, strict=True))


def iter_run_scores(conn: psycopg.Connection, run_id: int, batch: int = 20_000):
    """Stream one run's score rows (server-side cursor), ordered by customer id.

    Take the run id from :func:`active_run` once and pass it here, so parameters and rows come
    from the same run even if another run is published meanwhile.
    """
    with conn.cursor(name="run_scores") as cur:
        cur.itersize = batch
        cur.execute(
            "SELECT customer_id, frequency, recency_days, t_days, monetary_value, p_alive,"
            " clv_12m FROM customer_scores WHERE run_id = %s ORDER BY customer_id", (run_id,))
        yield from cur


# Weekly repeat occasions (all customers) and first-purchase cohorts, for the tracking plot.
_WEEKLY_REPEATS = """
WITH occasions AS (
    SELECT customer_id, (ordered_at AT TIME ZONE %(tz)s)::date AS day
    FROM orders
    WHERE status = 'paid' AND ordered_at < (%(as_of)s::date + 1)::timestamp AT TIME ZONE %(tz)s
    GROUP BY customer_id, day
),
numbered AS (
    SELECT day, row_number() OVER (PARTITION BY customer_id ORDER BY day) AS k FROM occasions
)
SELECT day, count(*) FILTER (WHERE k > 1) AS repeats, count(*) FILTER (WHERE k = 1) AS firsts
FROM numbered GROUP BY day ORDER BY day
"""


def daily_activity(conn: psycopg.Connection, as_of: date,
                   timezone: str) -> tuple[list[date], NDArray[np.float64], NDArray[np.float64]]:
    """Per day: repeat occasions and first purchases (new customers)."""
    rows = conn.execute(_WEEKLY_REPEATS, {"as_of": as_of, "tz": timezone}).fetchall()
    return ([r[0] for r in rows], np.array([r[1] for r in rows], dtype=float),
            np.array([r[2] for r in rows], dtype=float))


def store_diagnostics(conn: psycopg.Connection, run_id: int, diagnostics: dict[str, Any]) -> None:
    """Attach plot data to a run (part of the publishing transaction when called inside it)."""
    conn.execute("UPDATE scoring_runs SET diagnostics = %s WHERE id = %s",
                 (json.dumps(diagnostics), run_id))


def run_diagnostics(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """A run's plot data and models, or None when the run has none."""
    row = conn.execute("SELECT diagnostics, models FROM scoring_runs WHERE id = %s",
                       (run_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return {**row[0], "models": row[1]}
