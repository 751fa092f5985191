"""The local engine: a run's inputs from PostgreSQL, its scores into the run's partition.

:class:`LocalRunSession` is the one owner of a run's session state: the temporary tables
``run_occasions``, ``run_customers`` and ``run_computed`` exist only between
:meth:`~LocalRunSession.load` and :meth:`~LocalRunSession.close`, and no other module creates
or drops them. ``load`` reads everything the
pure pipeline needs in one snapshot; ``write_scores`` joins the scored arrays back to the
customer ids and writes the run's partition (DESIGN.md §3: "where the summary comes from" and
"where scores go" are decided here; another engine implements the same two methods).
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from crm_service.scoring import churn, occasions
from crm_service.scoring.inputs import (
    COMPUTED,
    RunConfig,
    RunInputs,
    ScoredRun,
    Summary,
)
from crm_service.storage import policies, publishing, runs, summary
from crm_service.storage.score_reads import SCORE_COLUMNS
from models.segments import TierPolicy

TEMP_TABLES = ("run_occasions", "run_customers", "run_computed")

# Score rows: the customer ids from run_customers, everything else from the arrays (the
# summary's and the pipeline's), joined by row index. Dates follow from as_of, T and recency.
_SUMMARY_COLUMNS = ("frequency", "recency", "T", "monetary_value", "historic_spend")
_INSERT_SCORES = """
INSERT INTO {part} (run_id, {columns})
SELECT {run_id}, s.customer_id, c.frequency::int, c.recency::int, c.t::int,
       round(c.monetary_value::numeric, 2), round(c.historic_spend::numeric, 2),
       %(as_of)s::date - c.t::int, %(as_of)s::date - c.t::int + c.recency::int,
       CASE WHEN c.frequency > 0 THEN c.recency / c.frequency END,
       c.p_alive, c.expected_purchases_30, c.expected_purchases_90, c.expected_purchases_365,
       CASE WHEN c.next_order_days <> 'NaN' THEN %(as_of)s::date + c.next_order_days::int END,
       c.expected_spend, c.clv_12m, c.churn_probability,
       CASE WHEN c.churn_probability >= %(high)s THEN 'high'
            WHEN c.churn_probability >= %(medium)s THEN 'medium' ELSE 'low' END,
       (%(tiers)s::text[])[c.tier_code::int + 1], (%(values)s::text[])[c.value_code::int + 1],
       c.rfm_recency::smallint, c.rfm_frequency::smallint, c.rfm_monetary::smallint,
       (%(rfm)s::text[])[c.rfm_code::int + 1], (%(actions)s::text[])[c.action_code::int + 1],
       %(as_of)s::date - c.tier_since_days::int,
       c.purchases_365_p10::int, c.purchases_365_p90::int, c.spend_365_p10, c.spend_365_p90,
       (%(alive_notes)s::text[])[c.alive_note_code::int + 1]
FROM run_customers s JOIN run_computed c USING (i)
"""


class LocalRunSession:
    """A run's working state in one PostgreSQL session (the local engine's seam).

    Use as a context manager: the temporary tables are dropped on exit, however the run ends.
    """

    def __init__(self, conn: psycopg.Connection, timezone: str,
                 statement_timeout_ms: int) -> None:
        self.conn, self.timezone = conn, timezone
        self.statement_timeout_ms = statement_timeout_ms
        self.stage_seconds: dict[str, float] = {}
        self._saved_timeout: str | None = None

    def __enter__(self) -> LocalRunSession:
        # A run's statements (a GROUP BY over every order of ten million customers) need a
        # bound of their own: the API's statement timeout is for requests, not batch work.
        row = self.conn.execute("SELECT current_setting('statement_timeout'),"
                                " set_config('statement_timeout', %s, false)",
                                (str(self.statement_timeout_ms),)).fetchone()
        self._saved_timeout = row[0] if row else None
        self.conn.commit()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except psycopg.Error:
            if exc_type is None:
                raise  # else the run's own error says more (the session is likely gone)

    def close(self) -> None:
        """Drop the session's temporary tables (after a failure: roll back first)."""
        if self.conn.closed:
            return
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            self.conn.rollback()
        self._drop_temp_tables()
        if self._saved_timeout is not None:
            self.conn.execute("SELECT set_config('statement_timeout', %s, false)",
                              (self._saved_timeout,))
        self.conn.commit()

    def _drop_temp_tables(self) -> None:
        for table in TEMP_TABLES:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(
                sql.Identifier(table)))

    def _lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.stage_seconds[name] = round(now - since, 3)
        return now

    def load(self, as_of: date, config: RunConfig) -> RunInputs:
        """Summary, churn inputs, the live run's tiers and the tier policy, in one snapshot."""
        conn, tz, horizon = self.conn, self.timezone, config.churn_horizon_days
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self._drop_temp_tables()  # an earlier run's, if this session ran one
            customers, rows = summary.collect_occasions(conn, as_of, tz)
            started = self._lap("occasions", started)
            occ = summary.read_occasions(conn, customers, rows)
            base = occasions.summarize(occ, as_of)
            started = self._lap("summary", started)
            churn_inputs = None
            if churn.wanted(config.churn_model, base.span_days, horizon):
                summary.read_refunds(conn, occ, as_of, tz)
                churn_inputs = occasions.churn_inputs(occ, as_of, horizon, base.span_days)
                started = self._lap("churn_features", started)
            del occ
            previous = summary.previous_tiers(conn, base.size, as_of)
            version, policy = policies.current_tier_policy(conn)
            live = runs.active_run(conn)
            self._lap("previous_tiers", started)
        return RunInputs(summary=base, previous=previous, policy_version=version,
                         policy=TierPolicy.from_dict(policy), churn=churn_inputs,
                         previous_models=(live or {}).get("models") or {})

    def write_scores(self, run_id: int, as_of: date, base: Summary,
                     scored: ScoredRun) -> None:
        """Write the scored run to its own (detached) partition, indexed and analysed."""
        conn = self.conn
        medium, high = scored.risk_bands
        arrays = {**{name.lower(): getattr(base, name) for name in _SUMMARY_COLUMNS},
                  **{name: scored.computed[name] for name in COMPUTED}}
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL work_mem = '{summary.RUN_WORK_MEM}'")
            part = publishing.create_partition(conn, run_id)
            cur.execute("CREATE TEMP TABLE run_computed (i int4, "
                        + ", ".join(f"{c} float8" for c in arrays) + ") ON COMMIT DROP")
            with cur.copy(f"COPY run_computed (i, {', '.join(arrays)}) FROM STDIN"
                          " (FORMAT binary)") as copy:
                for chunk in publishing.binary_copy(arrays):
                    copy.write(chunk)
            cur.execute("ANALYZE run_computed")
            params: dict[str, Any] = {"as_of": as_of, "medium": medium, "high": high,
                                      **scored.labels}
            cur.execute(sql.SQL(_INSERT_SCORES).format(
                part=part, columns=sql.SQL(", ").join(map(sql.Identifier, SCORE_COLUMNS)),
                run_id=sql.Literal(int(run_id))), params)
            publishing.finish_partition(conn, run_id)
