"""SQL for scoring runs: the per-customer summary, run records, score rows and publishing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

# Purchase occasions (DESIGN.md §2): a customer's paid orders on one calendar day in the
# reporting zone are one occasion, their amounts summed; cancelled and refunded orders do not
# count. Only orders up to the end of `as_of` (local) are seen.
#
# One pass over the orders yields, per customer, the summary as of `as_of` and as of the
# backtest's calibration end, and per day the repeat occasions and first purchases (the
# tracking plot). It lands in a temporary table of this session: row i is customer i in id
# order, so scores computed in numpy come back by index and customer ids never enter Python.
# Occasions (customer, day) up to as_of with the gap since the customer's previous occasion
# (NULL for the first), the day of the next, and the channel of the first. The window reuses the
# GROUP BY's (customer, day) order: no second sort of two million rows.
_OCCASIONS = """
CREATE TEMP TABLE run_occasions AS
SELECT customer_id, day, amount, paid_orders, channel,
       day - lag(day) OVER w        AS gap,
       lead(day) OVER w             AS next_day,
       first_value(channel) OVER w  AS first_channel
FROM (
    SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, sum(amount) AS amount,
           count(*) AS paid_orders, min(channel) AS channel
    FROM orders
    WHERE status = 'paid' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
    GROUP BY customer_id, day
) days
WINDOW w AS (PARTITION BY customer_id ORDER BY day)
"""

# Refunded orders per customer and day (for the churn features' refund share).
_REFUNDS = """
CREATE TEMP TABLE run_refunds AS
SELECT customer_id, (ordered_at AT TIME ZONE {tz})::date AS day, count(*) AS refunded_orders
FROM orders
WHERE status = 'refunded' AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}
GROUP BY customer_id, day
"""

_SUMMARY = """
CREATE TEMP TABLE run_summary AS
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
SELECT (row_number() OVER (ORDER BY customer_id NULLS LAST) - 1)::int AS i,
       customer_id, day,
       (count(*) - 1)::int                                   AS frequency,
       max(day) - min(day)                                   AS recency,
       {as_of}::date - min(day)                              AS t,
       round(coalesce(avg(amount) FILTER (WHERE k > 1), 0), 2) AS monetary_value,
       sum(amount)                                           AS historic_spend,
       min(day)                                              AS first_purchase,
       max(day)                                              AS last_purchase,
       (count(*) FILTER (WHERE day <= {cal_end}) - 1)::int   AS cal_frequency,
       coalesce(max(day) FILTER (WHERE day <= {cal_end}) - min(day), -1) AS cal_recency,
       (count(*) FILTER (WHERE k > 1))::int                  AS repeats,
       (count(*) FILTER (WHERE k = 1))::int                  AS firsts
FROM numbered
GROUP BY GROUPING SETS ((customer_id), (day))
"""

# The numeric columns in id order as one packed big-endian bytea: a million customers leave
# the database in well under a second, where a CSV of the same took four.
_PACKED = """
SELECT string_agg(int4send(i) || int4send(frequency) || int4send(recency) || int4send(t)
                  || float8send(monetary_value::float8) || float8send(historic_spend::float8)
                  || int4send(cal_frequency) || int4send(cal_recency), ''::bytea)
FROM run_summary WHERE customer_id IS NOT NULL
"""
_PACKED_DTYPE = np.dtype([("i", ">i4"), ("frequency", ">i4"), ("recency", ">i4"),
                          ("t", ">i4"), ("monetary_value", ">f8"), ("historic_spend", ">f8"),
                          ("cal_frequency", ">i4"), ("cal_recency", ">i4")])
# Sorts and hashes of a million rows fit in memory with this; the default spills to disk.
_RUN_WORK_MEM = "128MB"


@dataclass
class RFM:
    """Frequency, recency and T (days) of a set of customers."""

    frequency: NDArray[np.float64]
    recency: NDArray[np.float64]
    T: NDArray[np.float64]  # noqa: N815 - the literature's notation

    @property
    def size(self) -> int:
        """Number of customers."""
        return int(self.frequency.size)


@dataclass
class Summary(RFM):
    """Per-customer RFM summary as of ``as_of`` (arrays in customer-id order).

    ``calibration`` is the same customers' summary as of ``calibration_end`` (the backtest's
    cut-off), for those who had bought by then (``in_calibration``); ``days``, ``repeats`` and
    ``firsts`` count repeat occasions and first purchases per day.
    """

    as_of: date
    monetary_value: NDArray[np.float64]
    historic_spend: NDArray[np.float64]
    calibration_end: date
    in_calibration: NDArray[np.bool_]
    calibration: RFM
    days: list[date]
    repeats: NDArray[np.float64]
    firsts: NDArray[np.float64]

    @property
    def holdout_days(self) -> int:
        """Days after the calibration end that the backtest holds out."""
        return (self.as_of - self.calibration_end).days


def load_summary(conn: psycopg.Connection, as_of: date, timezone: str, *,
                 holdout_share: float = 0.25) -> Summary:
    """Compute the summary in PostgreSQL (the session's ``run_summary``) and read it.

    The calibration end is ``as_of`` minus ``holdout_share`` of the span from the first
    purchase (at least one day). Call inside one transaction if the summary and anything
    read alongside it must see the same orders.
    """
    def bind(query: str, **values: Any) -> sql.Composed:
        return sql.SQL(query).format(**{k: sql.Literal(v) for k, v in values.items()})

    first = conn.execute(bind(
        "SELECT (min(ordered_at) AT TIME ZONE {tz})::date FROM orders WHERE status = 'paid'"
        " AND ordered_at < ({as_of}::date + 1)::timestamp AT TIME ZONE {tz}",
        tz=timezone, as_of=as_of)).fetchone()
    span = (as_of - first[0]).days if first and first[0] else 0
    cal_end = as_of - timedelta(days=max(int(span * holdout_share), 1))
    drop_summary(conn)
    conn.execute(f"SET LOCAL work_mem = '{_RUN_WORK_MEM}'")
    conn.execute(bind(_SUMMARY, tz=timezone, as_of=as_of, cal_end=cal_end))
    conn.execute("ANALYZE run_summary")  # temporary tables are never auto-analysed
    with conn.cursor(binary=True) as cur:
        packed = cur.execute(_PACKED).fetchone()
        daily = cur.execute("SELECT day, repeats, firsts FROM run_summary"
                            " WHERE customer_id IS NULL ORDER BY day").fetchall()
    unordered = np.frombuffer(packed[0] if packed and packed[0] else b"", dtype=_PACKED_DTYPE)
    rows = np.empty_like(unordered)  # rows in the order of i (the scan's order is not fixed)
    rows[unordered["i"]] = unordered

    def col(name: str) -> NDArray[np.float64]:
        return rows[name].astype(np.float64)

    x, t_x, big_t = col("frequency"), col("recency"), col("t")
    cal_x, cal_t_x = col("cal_frequency"), col("cal_recency")
    in_cal = cal_x >= 0
    return Summary(
        frequency=x, recency=t_x, T=big_t, as_of=as_of,
        monetary_value=col("monetary_value"), historic_spend=col("historic_spend"),
        calibration_end=cal_end, in_calibration=in_cal,
        calibration=RFM(cal_x[in_cal], cal_t_x[in_cal],
                        big_t[in_cal] - (as_of - cal_end).days),
        days=[r[0] for r in daily], repeats=np.array([r[1] for r in daily], dtype=float),
        firsts=np.array([r[2] for r in daily], dtype=float),
    )


def collect_occasions(conn: psycopg.Connection, as_of: date, timezone: str) -> None:
    """Build the session's ``run_occasions`` and ``run_refunds`` (the churn features' input).

    Call in the transaction that loaded the summary, so both see the same orders.
    """
    conn.execute("DROP TABLE IF EXISTS pg_temp.run_occasions")
    conn.execute("DROP TABLE IF EXISTS pg_temp.run_refunds")
    conn.execute(f"SET LOCAL work_mem = '{_RUN_WORK_MEM}'")
    for query in (_OCCASIONS, _REFUNDS):
        conn.execute(sql.SQL(query).format(tz=sql.Literal(timezone), as_of=sql.Literal(as_of)))
    conn.execute("ANALYZE run_occasions")
    conn.execute("ANALYZE run_refunds")


def drop_summary(conn: psycopg.Connection) -> None:
    """Drop the session's working tables of a run if they exist."""
    for table in ("run_summary", "run_occasions", "run_refunds", "run_occasions_sample",
                  "run_refunds_sample", "run_features"):
        conn.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")


# A running run's session holds the advisory lock (RUN_OWNER_LOCK, run id), taken in the
# transaction that marks it running. PostgreSQL releases it when that session ends, however it
# ends (kill -9, crash, lost connection), so "running, lock free" means the process died.
RUN_OWNER_LOCK = 0x43524D  # the two-int advisory lock space; other locks use one bigint
DIED = ("the process running it stopped before it finished (killed, crashed or lost the "
        "database); nothing of it was published and the previous run stays live")


def _own(conn: psycopg.Connection, run_id: int) -> None:
    conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (RUN_OWNER_LOCK, run_id))


def release_run(conn: psycopg.Connection, run_id: int) -> None:
    """Give up this session's ownership of ``run_id`` (after it finished, either way)."""
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", (RUN_OWNER_LOCK, run_id))
        conn.commit()


def fail_dead_runs(conn: psycopg.Connection) -> list[int]:
    """Mark failed every run still ``running`` whose owning session is gone; return their ids.

    Workers call this when they start and between runs, and ``crm-service score`` before it
    starts, so a killed run is marked failed on the next start instead of looking alive.
    """
    with conn.transaction():
        running = [int(r[0]) for r in conn.execute(
            "SELECT id FROM scoring_runs WHERE status = 'running' ORDER BY id"
            " FOR UPDATE SKIP LOCKED").fetchall()]
        dead = [run_id for run_id in running if conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s::int, %s::int)",
            (RUN_OWNER_LOCK, run_id)).fetchone()[0]]  # type: ignore[index]
        if dead:
            conn.execute("UPDATE scoring_runs SET status = 'failed', error = %s,"
                         " finished_at = now(), progress = NULL WHERE id = ANY(%s)", (DIED, dead))
    return dead


def create_run(conn: psycopg.Connection, as_of: date, timezone: str, *,
               status: str = "running", churn_horizon_days: int = 90) -> int:
    """Record a new run (running and owned by this session, or queued); committed at once."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO scoring_runs (status, as_of, timezone, started_at, heartbeat_at,"
            " churn_horizon_days) VALUES (%s, %s, %s, CASE WHEN %s = 'running' THEN now() END,"
            " now(), %s) RETURNING id",
            (status, as_of, timezone, status, churn_horizon_days)).fetchone()
        assert row is not None
        if status == "running":
            _own(conn, int(row[0]))
    return int(row[0])


class RunTakenOverError(RuntimeError):
    """The run is no longer this attempt's (marked failed or finished by someone else)."""


def claim_queued_run(conn: psycopg.Connection) -> tuple[int, date, int] | None:
    """Take the oldest queued run for this worker (SKIP LOCKED: workers never share a run).

    The run is owned by this session from the claim on (see :data:`RUN_OWNER_LOCK`); if the
    process dies, :func:`fail_dead_runs` marks it failed.
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE scoring_runs SET status = 'running', started_at = now(), heartbeat_at = now(),"
            " progress = 'starting', attempt = attempt + 1 WHERE id = (SELECT id FROM scoring_runs"
            " WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)"
            " RETURNING id, as_of, attempt").fetchone()
        if row:
            _own(conn, int(row[0]))
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
    "expected_next_order", "expected_spend", "clv_12m", "churn_probability", "churn_risk",
    "tier", "value_segment", "rfm_recency", "rfm_frequency", "rfm_monetary", "rfm_segment",
    "recommended_action", "tier_since",
)

# What a run computes per customer, sent back in row order of run_summary. NaN in
# next_order_days means no expected next order.
COMPUTED = ("p_alive", "expected_purchases_30", "expected_purchases_90",
            "expected_purchases_365", "next_order_days", "expected_spend", "clv_12m",
            "churn_probability", "tier_code", "value_code", "rfm_recency", "rfm_frequency",
            "rfm_monetary", "rfm_code", "action_code", "tier_since_days", "previous_tier_code",
            "tier_changed")

_INSERT_SCORES = """
INSERT INTO customer_scores (run_id, {columns})
SELECT %(run_id)s, s.customer_id, s.frequency, s.recency, s.t, s.monetary_value,
       s.historic_spend, s.first_purchase, s.last_purchase,
       CASE WHEN s.frequency > 0 THEN s.recency::float8 / s.frequency END,
       c.p_alive, c.expected_purchases_30, c.expected_purchases_90, c.expected_purchases_365,
       CASE WHEN c.next_order_days <> 'NaN' THEN %(as_of)s::date + c.next_order_days::int END,
       c.expected_spend, c.clv_12m, c.churn_probability,
       CASE WHEN c.churn_probability >= %(high)s THEN 'high'
            WHEN c.churn_probability >= %(medium)s THEN 'medium' ELSE 'low' END,
       (%(tiers)s::text[])[c.tier_code::int + 1], (%(values)s::text[])[c.value_code::int + 1],
       c.rfm_recency::smallint, c.rfm_frequency::smallint, c.rfm_monetary::smallint,
       (%(rfm)s::text[])[c.rfm_code::int + 1], (%(actions)s::text[])[c.action_code::int + 1],
       %(as_of)s::date - c.tier_since_days::int
FROM run_summary s JOIN run_computed c USING (i)
WHERE s.customer_id IS NOT NULL
"""


# Lifecycle events against the previous live run (the outbox, see migration 0013). A customer
# not scored there counts as "no tier" (tier.changed from null). The first run emits none.
_INSERT_EVENTS = """
INSERT INTO events (type, customer_id, run_id, data)
SELECT e.type, n.customer_id, n.run_id,
       jsonb_build_object('customer_id', n.customer_id, 'run_id', n.run_id,
                          'as_of', %(as_of)s::date, 'from_tier', p.tier, 'to_tier', n.tier,
                          'value_segment', n.value_segment, 'rfm_segment', n.rfm_segment,
                          'recommended_action', n.recommended_action,
                          'previous_churn_risk', p.churn_risk, 'churn_risk', n.churn_risk,
                          'churn_probability', n.churn_probability, 'clv_12m', n.clv_12m,
                          'customer_ref', {ref})
FROM customer_scores n
LEFT JOIN customer_scores p ON p.run_id = %(previous)s AND p.customer_id = n.customer_id
CROSS JOIN LATERAL (VALUES
    ('tier.changed', n.tier IS DISTINCT FROM p.tier),
    ('vip.entered', n.tier = 'high_value' AND p.tier IS DISTINCT FROM 'high_value'),
    ('vip.lost', p.tier = 'high_value' AND n.tier IS DISTINCT FROM 'high_value'),
    ('dormant.entered', n.tier = 'dormant' AND p.tier IS DISTINCT FROM 'dormant'),
    ('churn_risk.raised', array_position(ARRAY['low', 'medium', 'high'], n.churn_risk)
                          > array_position(ARRAY['low', 'medium', 'high'], p.churn_risk))
) AS e (type, hit)
WHERE n.run_id = %(run_id)s AND e.hit
ORDER BY n.customer_id
"""


def _binary_copy(columns: dict[str, NDArray[np.float64]], chunk: int = 100_000):
    """PostgreSQL binary COPY data for (i int4, one float8 per column), built with numpy.

    Every field has a fixed width, so a tuple is one record of a structured array: no
    Python per row.
    """
    names = list(columns)
    fields: list[tuple[str, str]] = [("n", ">i2"), ("li", ">i4"), ("i", ">i4")]
    for k in range(len(names)):
        fields += [(f"l{k}", ">i4"), (f"v{k}", ">f8")]
    dtype = np.dtype(fields)
    n = len(next(iter(columns.values()))) if names else 0
    yield b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        rec = np.empty(hi - lo, dtype=dtype)
        rec["n"], rec["li"], rec["i"] = 1 + len(names), 4, np.arange(lo, hi)
        for k, name in enumerate(names):
            rec[f"l{k}"], rec[f"v{k}"] = 8, columns[name][lo:hi]
        yield rec.tobytes()
    yield (-1).to_bytes(2, "big", signed=True)


def publish_run(conn: psycopg.Connection, run_id: int, attempt: int, as_of: date,
                computed: dict[str, NDArray[np.float64]], counts: dict[str, Any],
                models: dict[str, Any], diagnostics: dict[str, Any] | None = None, *,
                risk_thresholds: tuple[float, float] = (0.5, 0.8),
                churn_artifact: tuple[bytes, dict[str, Any]] | None = None,
                labels: dict[str, list[str]] | None = None,
                tier_policy_version: int | None = None,
                ref_params: dict[str, bytes] | None = None) -> None:
    """Write the run's scores and make it the live run, all in one transaction.

    ``computed`` holds the :data:`COMPUTED` arrays in the row order of the session's summary
    (:func:`load_summary`); they go in by binary COPY and are joined to the summary there.
    ``risk_thresholds`` (medium, high) band the churn probability; ``churn_artifact`` (skops
    bytes and their metadata) is stored with the run. ``labels`` name the codes of the
    ``*_code`` arrays (``tiers``, ``values``, ``rfm``, ``actions``). ``ref_params``
    (:func:`crm_service.erasure.ref_sql_params`) let events carry each ``customer_ref``.
    Customers erased since the run started are left out.
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
        # Publishing runs one at a time from here on, so event ids are committed in order.
        cur.execute("SELECT active_run_id FROM scoring_state FOR UPDATE")
        live = cur.fetchone()
        previous_run = live[0] if live else None
        # Erasures wait for this lock; those since the run started must not come back.
        cur.execute("SELECT EXISTS (SELECT 1 FROM erased_customers e, scoring_runs r"
                    " WHERE r.id = %s AND e.erased_at >= r.started_at)", (run_id,))
        if cur.fetchone()[0]:  # type: ignore[index]
            cur.execute("DELETE FROM run_summary s WHERE s.customer_id IS NOT NULL AND NOT EXISTS"
                        " (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)")
        cur.execute(f"SET LOCAL work_mem = '{_RUN_WORK_MEM}'")
        cur.execute("CREATE TEMP TABLE run_computed (i int4, "
                    + ", ".join(f"{c} float8" for c in COMPUTED) + ") ON COMMIT DROP")
        with cur.copy(f"COPY run_computed (i, {', '.join(COMPUTED)}) FROM STDIN"
                      " (FORMAT binary)") as copy:
            for part in _binary_copy({c: computed[c] for c in COMPUTED}):
                copy.write(part)
        cur.execute("ANALYZE run_computed")
        cur.execute(sql.SQL(_INSERT_SCORES).format(columns=sql.SQL(", ".join(SCORE_COLUMNS))),
                    {"run_id": run_id, "as_of": as_of, "medium": risk_thresholds[0],
                     "high": risk_thresholds[1], **(labels or {})})
        # Tier history: the customers whose tier differs from the run live until now.
        cur.execute(
            "INSERT INTO tier_transitions (customer_id, run_id, from_tier, to_tier)"
            " SELECT s.customer_id, %(run_id)s, (%(tiers)s::text[])[c.previous_tier_code::int + 1],"
            " (%(tiers)s::text[])[c.tier_code::int + 1]"
            " FROM run_summary s JOIN run_computed c USING (i)"
            " WHERE s.customer_id IS NOT NULL AND c.tier_changed = 1",
            {"run_id": run_id, "tiers": (labels or {}).get("tiers", [])})
        if previous_run is not None:
            # The new run's rows are not in the statistics yet; without them the planner
            # picks a nested loop over a million customers (minutes, not seconds).
            cur.execute("ANALYZE customer_scores")
            from crm_service.erasure import ref_sql

            ref = ref_sql("n.customer_id") if ref_params else "NULL::bytea"
            cur.execute(_INSERT_EVENTS.replace("{ref}", f"encode({ref}, 'hex')"),
                        {"run_id": run_id, "previous": previous_run, "as_of": as_of,
                         **(ref_params or {})})
            counts["events"] = cur.rowcount
        if churn_artifact is not None:
            cur.execute("INSERT INTO churn_models (run_id, artifact, meta) VALUES (%s, %s, %s)",
                        (run_id, churn_artifact[0], json.dumps(churn_artifact[1])))
        cur.execute(
            "UPDATE scoring_runs SET status = 'succeeded', finished_at = now(), counts = %s,"
            " models = %s, progress = 'published', tier_policy_version = %s WHERE id = %s",
            (json.dumps(counts), json.dumps(models), tier_policy_version, run_id))
        if diagnostics is not None:
            store_diagnostics(conn, run_id, diagnostics)
        cur.execute("UPDATE scoring_state SET active_run_id = %s", (run_id,))


def active_run(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The live run's record, or None before the first successful run."""
    row = conn.execute(
        "SELECT r.id, r.status, r.as_of, r.time_unit, r.timezone, r.churn_horizon_days,"
        " r.created_at, r.finished_at, r.counts, r.models"
        " FROM scoring_state s JOIN scoring_runs r ON r.id = s.active_run_id").fetchone()
    if row is None:
        return None
    keys = ("run_id", "status", "as_of", "time_unit", "timezone", "churn_horizon_days",
            "created_at", "finished_at", "counts", "models")
    return dict(zip(keys, row, strict=True))


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


def current_tier_policy(conn: psycopg.Connection) -> tuple[int, dict[str, Any]]:
    """The tier policy in force (version, JSON); the built-in defaults become version 1."""
    from models.segments import TierPolicy

    row = conn.execute("SELECT version, policy FROM tier_policies"
                       " ORDER BY version DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), row[1]
    conn.execute("INSERT INTO tier_policies (version, policy, created_by) VALUES (1, %s,"
                 " 'defaults') ON CONFLICT DO NOTHING", (json.dumps(TierPolicy().as_dict()),))
    row = conn.execute("SELECT version, policy FROM tier_policies WHERE version = 1").fetchone()
    assert row is not None
    return 1, row[1]


def set_tier_policy(conn: psycopg.Connection, policy: dict[str, Any], created_by: str) -> int:
    """Store a (validated) policy as the next version; return it. Runs from now on use it."""
    with conn.transaction():
        conn.execute("LOCK TABLE tier_policies IN SHARE ROW EXCLUSIVE MODE")
        current_tier_policy(conn)
        row = conn.execute(
            "INSERT INTO tier_policies (version, policy, created_by)"
            " SELECT max(version) + 1, %s, %s FROM tier_policies RETURNING version",
            (json.dumps(policy), created_by)).fetchone()
    assert row is not None
    return int(row[0])


def previous_tiers(conn: psycopg.Connection, tiers: list[str], as_of: date
                   ) -> tuple[NDArray[np.int8], NDArray[np.float64], bool]:
    """The live run's tiers, per row of run_summary, for hysteresis and tier history.

    Returns the tier code (-1: not scored there), the days between that tier's
    ``tier_since`` and ``as_of``, and whether any run is live at all.
    """
    n_row = conn.execute("SELECT count(customer_id), (SELECT active_run_id IS NOT NULL"
                         " FROM scoring_state) FROM run_summary").fetchone()
    n, live = (int(n_row[0]), bool(n_row[1])) if n_row else (0, False)
    codes, since = np.full(n, -1, dtype=np.int8), np.zeros(n)
    with conn.cursor(binary=True) as cur:
        row = cur.execute(
            "SELECT string_agg(int4send(s.i) || int4send(array_position(%s::text[], p.tier) - 1)"
            "   || int4send(coalesce(%s::date - p.tier_since, 0)), ''::bytea)"
            " FROM run_summary s JOIN scoring_state st ON true"
            " JOIN customer_scores p ON p.run_id = st.active_run_id"
            "  AND p.customer_id = s.customer_id AND p.tier IS NOT NULL",
            (tiers, as_of)).fetchone()
    rows = np.frombuffer(row[0] if row and row[0] else b"",
                         dtype=[("i", ">i4"), ("code", ">i4"), ("since", ">i4")])
    codes[rows["i"]] = rows["code"]
    since[rows["i"]] = rows["since"]
    return codes, since, live


def run_record(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """One run's record by id."""
    row = conn.execute(
        "SELECT id, status, progress, as_of, time_unit, timezone, churn_horizon_days,"
        " created_at, started_at, finished_at, error, counts, models FROM scoring_runs"
        " WHERE id = %s", (run_id,)).fetchone()
    if row is None:
        return None
    keys = ("run_id", "status", "progress", "as_of", "time_unit", "timezone",
            "churn_horizon_days", "created_at", "started_at", "finished_at", "error", "counts",
            "models")
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
            " clv_12m, churn_probability, churn_risk, tier, value_segment, rfm_segment,"
            " recommended_action FROM customer_scores WHERE run_id = %s"
            " ORDER BY customer_id", (run_id,))
        yield from cur


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
