"""CSV export of the live scoring run (``crm-service export scores``)."""

from __future__ import annotations

import csv
from typing import IO, TYPE_CHECKING

import numpy as np

from crm_service.errors import NotFoundError
from crm_service.storage import runs
from crm_service.storage import score_reads as reads
from models.purchase import purchase_model

if TYPE_CHECKING:
    import psycopg

# DESIGN.md §5.
COLUMNS = ("customer_id", "tier", "value_segment", "rfm_segment", "frequency", "recency_days",
           "T_days", "monetary_value", "p_alive", "expected_purchases", "clv_12m",
           "churn_probability", "churn_risk", "recommended_action")
_BATCH = 20_000


def export_scores(conn: psycopg.Connection, out: IO[str], *, horizon_days: int = 90) -> int:
    """Write the live run as CSV to ``out``; return the number of customers.

    ``expected_purchases`` is computed for ``horizon_days`` from the stored summary and the
    run's parameters, so any horizon can be exported without re-scoring.
    """
    if horizon_days < 0:
        raise ValueError("horizon_days must be >= 0")
    run = runs.active_run(conn)
    if run is None:
        raise NotFoundError("no scoring run has been published yet; run `crm-service score`")
    selected = run["models"]["selected"]
    model = purchase_model(selected, run["models"][selected]["params"])
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    n = 0
    batch: list[tuple] = []

    def flush() -> None:
        x = np.array([r[1] for r in batch], dtype=float)
        t_x = np.array([r[2] for r in batch], dtype=float)
        big_t = np.array([r[3] for r in batch], dtype=float)
        expected = model.conditional_expected_purchases(horizon_days, x, t_x, big_t)
        for r, e in zip(batch, expected, strict=True):
            churn = "" if r[7] is None else f"{r[7]:.6f}"
            writer.writerow((r[0], r[9] or "", r[10] or "", r[11] or "", r[1], r[2], r[3],
                             f"{r[4]:.2f}", f"{r[5]:.6f}", f"{e:.6f}", f"{r[6]:.2f}", churn,
                             r[8] or "", r[12] or ""))
        batch.clear()

    for row in reads.iter_run_scores(conn, run["run_id"], _BATCH):
        batch.append(row)
        n += 1
        if len(batch) >= _BATCH:
            flush()
    if batch:
        flush()
    return n
