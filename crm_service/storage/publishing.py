"""Publishing a run (SQL): its own partition of ``customer_scores``, attached atomically.

A run's score rows go to a table of their own, ``customer_scores_r<run id>``, written before
publishing (by whichever engine scored the run) with a ``CHECK (run_id = <id>)`` and the
partition's primary key, so attaching it needs no scan. Publishing is one transaction: it
attaches the partition, writes tier history and lifecycle events against the live run's
partition, records the run and switches the ``scoring_state`` pointer. Readers switch at
commit and never see a mix of runs; retention later drops whole partitions
(:mod:`crm_service.storage.retention`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql

from crm_service.errors import RunAlreadyPublishedError
from crm_service.privacy.refs import ref_sql
from crm_service.scoring.inputs import ScoredRun
from crm_service.storage.runs import RunTakenOverError
from crm_service.storage.scores import is_attached
from crm_service.storage.summary import RUN_WORK_MEM, partition_name
from crm_service.vocabulary import CHURN_RISKS


def create_partition(conn: psycopg.Connection, run_id: int) -> sql.Identifier:
    """Create the run's (still detached) score table, replacing a failed attempt's leftover.

    Call in the transaction that fills it: with ``wal_level=minimal`` a table created and
    filled in one transaction is written without WAL.
    """
    part = sql.Identifier(partition_name(run_id))
    if is_attached(conn, partition_name(run_id)):
        raise RunAlreadyPublishedError(f"run {run_id} already has a published partition")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(part))
    conn.execute(sql.SQL("CREATE TABLE {part} (LIKE customer_scores INCLUDING DEFAULTS"
                         " INCLUDING CONSTRAINTS, CHECK (run_id = {run}))").format(
        part=part, run=sql.Literal(int(run_id))))
    return part


def finish_partition(conn: psycopg.Connection, run_id: int) -> None:
    """Index and analyse a filled partition (before it is attached: no lock on readers)."""
    part = sql.Identifier(partition_name(run_id))
    conn.execute(f"SET LOCAL maintenance_work_mem = '{RUN_WORK_MEM}'")
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (customer_id, run_id)").format(part))
    conn.execute(sql.SQL("ANALYZE {}").format(part))


def drop_unpublished_partition(conn: psycopg.Connection, run_id: int) -> None:
    """Drop a run's score table if it exists and was never attached (a failed attempt)."""
    name = partition_name(run_id)
    if not is_attached(conn, name):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def binary_copy(columns: dict[str, NDArray[np.float64]],
                chunk: int = 100_000) -> Iterator[bytes]:
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


# Tier history and lifecycle events against the live run, from one join of the two runs'
# partitions that keeps only the customers with something to say. A customer not scored in the
# live run counts as "no tier" (tier.changed from null). Event ids follow customer id order.
_CHANGED = """
d AS MATERIALIZED (
    SELECT n.customer_id, n.tier, n.value_segment, n.rfm_segment, n.recommended_action,
           n.churn_risk, n.churn_probability, n.clv_12m,
           p.tier AS from_tier, p.churn_risk AS previous_churn_risk
    FROM {new} n LEFT JOIN {live} p USING (customer_id)
    WHERE n.tier IS DISTINCT FROM p.tier OR n.churn_risk IS DISTINCT FROM p.churn_risk
)"""
# The bands in rising order of risk, from the one vocabulary (constants, not input).
_BANDS = "ARRAY[" + ", ".join(f"'{band}'" for band in CHURN_RISKS) + "]::text[]"
_EVENT_TYPES = """
CROSS JOIN LATERAL (VALUES
    ('tier.changed', d.tier IS DISTINCT FROM d.from_tier),
    ('vip.entered', d.tier = 'high_value' AND d.from_tier IS DISTINCT FROM 'high_value'),
    ('vip.lost', d.from_tier = 'high_value' AND d.tier IS DISTINCT FROM 'high_value'),
    ('dormant.entered', d.tier = 'dormant' AND d.from_tier IS DISTINCT FROM 'dormant'),
    ('churn_risk.raised', array_position({bands}, d.churn_risk)
                          > array_position({bands}, d.previous_churn_risk))
) AS e (type, hit)
WHERE e.hit""".replace("{bands}", _BANDS)
_TRANSITIONS_AND_EVENTS = "WITH" + _CHANGED + """,
history AS (
    INSERT INTO tier_transitions (customer_id, run_id, from_tier, to_tier)
    SELECT customer_id, %(run_id)s, from_tier, tier FROM d WHERE tier IS DISTINCT FROM from_tier
)
INSERT INTO events (type, customer_id, run_id, data)
SELECT e.type, d.customer_id, %(run_id)s,
       jsonb_build_object('customer_id', d.customer_id, 'run_id', %(run_id)s::bigint,
                          'as_of', %(as_of)s::date, 'from_tier', d.from_tier, 'to_tier', d.tier,
                          'value_segment', d.value_segment, 'rfm_segment', d.rfm_segment,
                          'recommended_action', d.recommended_action,
                          'previous_churn_risk', d.previous_churn_risk,
                          'churn_risk', d.churn_risk, 'churn_probability', d.churn_probability,
                          'clv_12m', d.clv_12m, 'customer_ref', {ref})
FROM d""" + _EVENT_TYPES + """
ORDER BY d.customer_id
"""
# What publishing would emit, per event type, without writing anything (a dry run).
_EVENTS_PREVIEW = "WITH" + _CHANGED + "\nSELECT e.type, count(*) FROM d" + _EVENT_TYPES + \
    "\nGROUP BY e.type ORDER BY e.type"


def _exists(cur: psycopg.Cursor, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    row = cur.fetchone()
    return bool(row and row[0])


def _claim_live(cur: psycopg.Cursor, run_id: int, attempt: int, *,
                share: bool = False) -> int | None:
    """Lock this attempt's run row and the live-run pointer; return the live run's id.

    The pointer is locked ``FOR SHARE`` with ``share``, else ``FOR UPDATE``. Raises
    :class:`RunTakenOverError` if another worker has claimed the run since.
    """
    cur.execute("SELECT 1 FROM scoring_runs WHERE id = %s AND attempt = %s"
                " AND status = 'running' FOR UPDATE", (run_id, attempt))
    if cur.fetchone() is None:
        raise RunTakenOverError(f"scoring run {run_id} was taken over by another worker")
    cur.execute("SELECT active_run_id FROM scoring_state FOR SHARE" if share
                else "SELECT active_run_id FROM scoring_state FOR UPDATE")
    live = cur.fetchone()
    return live[0] if live else None


# Rows of customers no longer there as they were when the run read the orders, each with the
# table whose recent rows say some may exist: erased (no row any more), and merged into another
# (the alias gets no row, transition or event of its own; the survivor's answer is provisional
# until the next run).
_GONE_SINCE_RUN = (
    ("SELECT EXISTS (SELECT 1 FROM erased_customers e, scoring_runs r"
     " WHERE r.id = %s AND e.erased_at >= r.started_at - interval '1 day')",
     "DELETE FROM {} s WHERE NOT EXISTS (SELECT 1 FROM customers c"
     " WHERE c.customer_id = s.customer_id)"),
    ("SELECT EXISTS (SELECT 1 FROM customer_merges m, scoring_runs r"
     " WHERE r.id = %s AND m.created_at >= r.started_at - interval '1 day')",
     "DELETE FROM {} s USING customers c WHERE c.customer_id = s.customer_id"
     " AND c.merged_into IS NOT NULL"),
)


def _drop_erased(cur: psycopg.Cursor, run_id: int, part: sql.Identifier) -> None:
    """Remove from the run's table the customers erased or merged since (about) the run started."""
    for recent, delete in _GONE_SINCE_RUN:
        cur.execute(recent, (run_id,))
        if cur.fetchone()[0]:  # type: ignore[index]
            cur.execute(sql.SQL(delete).format(part))


def publish(conn: psycopg.Connection, run_id: int, attempt: int, as_of: date,
            scored: ScoredRun, *, ref_params: dict[str, bytes] | None = None) -> int | None:
    """Attach the run's written partition and make it the live run, in one transaction.

    Customers erased since the run started are removed from the partition first. Only the
    attempt that owns the run may publish: the run row is locked first. ``ref_params``
    (:func:`crm_service.privacy.refs.ref_sql_params`) let events carry each ``customer_ref``.
    Returns the run that was live before (None for the first run).

    Raises
    ------
    RunTakenOverError
        If another worker has claimed the run since this attempt started.
    """
    part = sql.Identifier(partition_name(run_id))
    counts = scored.counts
    with conn.transaction(), conn.cursor() as cur:
        # Publishing runs one at a time from here on, so event ids are committed in order.
        previous_run = _claim_live(cur, run_id, attempt)
        # Erasures wait for this lock; those the run's snapshot may not have seen must not come
        # back. erased_at is the erasure's start, and an erasure that started before the run
        # may commit after the run read the orders (it waits for this very lock): a day's
        # margin covers any erasure transaction (each statement is bounded by the API's
        # timeout). Then the customers no longer held are dropped from the new partition.
        _drop_erased(cur, run_id, part)
        cur.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
        cur.execute(sql.SQL("ALTER TABLE customer_scores ATTACH PARTITION {} FOR VALUES IN ({})")
                    .format(part, sql.Literal(int(run_id))))
        if previous_run is not None and _exists(cur, partition_name(previous_run)):

            ref = ref_sql("d.customer_id") if ref_params else "NULL::bytea"
            query = sql.SQL(_TRANSITIONS_AND_EVENTS.replace("{ref}", f"encode({ref}, 'hex')"))
            cur.execute(query.format(new=part,
                                     live=sql.Identifier(partition_name(previous_run))),
                        {"run_id": run_id, "as_of": as_of, **(ref_params or {})})
            counts["events"] = cur.rowcount
        if scored.churn_artifact is not None:
            cur.execute("INSERT INTO churn_models (run_id, artifact, meta) VALUES (%s, %s, %s)",
                        (run_id, scored.churn_artifact[0], json.dumps(scored.churn_artifact[1])))
        cur.execute(
            "UPDATE scoring_runs SET status = 'succeeded', finished_at = now(), counts = %s,"
            " models = %s, diagnostics = %s, progress = 'published', tier_policy_version = %s,"
            " previous_run_id = %s WHERE id = %s",
            (json.dumps(counts), json.dumps(scored.models), json.dumps(scored.diagnostics),
             scored.policy_version, previous_run, run_id))
        cur.execute("UPDATE scoring_state SET active_run_id = %s", (run_id,))
    return previous_run


def finish_dry_run(conn: psycopg.Connection, run_id: int, attempt: int,
                   scored: ScoredRun) -> dict[str, object]:
    """Record a dry run's results and drop its partition; nothing becomes live.

    Counts the events publishing would emit against the live run, per type, from the same
    join publishing uses; stores them with the run's counts (``counts.dry_run``) and marks
    the run succeeded with its scores not kept. Returns the dry-run report.

    Raises
    ------
    RunTakenOverError
        If another worker has claimed the run since this attempt started.
    """
    part = sql.Identifier(partition_name(run_id))
    with conn.transaction(), conn.cursor() as cur:
        # Shared: no run publishes (and retires the live run's rows) while this one compares.
        live_run = _claim_live(cur, run_id, attempt, share=True)
        _drop_erased(cur, run_id, part)  # counted as publishing would: without them
        events: dict[str, int] = {}
        compared = live_run is not None and _exists(cur, partition_name(live_run))
        if compared and live_run is not None:
            cur.execute(f"SET LOCAL work_mem = '{RUN_WORK_MEM}'")
            cur.execute(sql.SQL(_EVENTS_PREVIEW).format(
                new=part, live=sql.Identifier(partition_name(live_run))))
            events = {str(t): int(n) for t, n in cur.fetchall()}
        report: dict[str, object] = {
            "published": False, "compared_with_run_id": live_run if compared else None,
            "events": events, "events_total": sum(events.values())}
        counts = {**scored.counts, "dry_run": report}
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(part))
        cur.execute(
            "UPDATE scoring_runs SET status = 'succeeded', finished_at = now(), counts = %s,"
            " models = %s, diagnostics = %s, progress = 'dry run: not published',"
            " tier_policy_version = %s, scores_retired_at = now() WHERE id = %s",
            (json.dumps(counts), json.dumps(scored.models), json.dumps(scored.diagnostics),
             scored.policy_version, run_id))
    scored.counts["dry_run"] = report
    return report
