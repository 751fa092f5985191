"""CSV export of the live scoring run (``crm-service export scores``)."""

from __future__ import annotations

import csv
from typing import IO, TYPE_CHECKING

import numpy as np

from crm_service.errors import NotFoundError
from crm_service.storage import runs
from crm_service.storage import score_reads as reads
from models import forecast
from models.purchase import purchase_model
from models.rfm import compress_with_index

if TYPE_CHECKING:
    import psycopg

# DESIGN.md §5. The last five came with the intervals (issue 19): purchases_p10/p90 are over
# the export's horizon like expected_purchases, the spend interval over the stored 365 days.
COLUMNS = ("customer_id", "tier", "value_segment", "rfm_segment", "frequency", "recency_days",
           "T_days", "monetary_value", "p_alive", "expected_purchases", "clv_12m",
           "churn_probability", "churn_risk", "recommended_action", "purchases_p10",
           "purchases_p90", "spend_365_p10", "spend_365_p90", "p_alive_note")
_BATCH = 20_000


def export_scores(conn: psycopg.Connection, out: IO[str], *, horizon_days: int = 90) -> int:
    """Write the live run as CSV to ``out``; return the number of customers.

    ``expected_purchases`` and the purchase interval (``purchases_p10``, ``purchases_p90``)
    are computed for ``horizon_days`` from the stored summary and the run's parameters, so any
    horizon can be exported without re-scoring; the spend interval is the run's (365 days).
    Empty where a run from before the intervals has none.
    """
    if horizon_days < 0:
        raise ValueError("horizon_days must be >= 0")
    run = runs.active_run(conn)
    if run is None:
        raise NotFoundError("no scoring run has been published yet; run `crm-service score`")
    selected = run["models"]["selected"]
    model = purchase_model(selected, run["models"][selected]["params"])
    levels = forecast.stored_levels(run["models"].get("intervals"))
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    n = 0
    batch: list[tuple] = []

    def flush() -> None:
        x = np.array([r[1] for r in batch], dtype=float)
        t_x = np.array([r[2] for r in batch], dtype=float)
        big_t = np.array([r[3] for r in batch], dtype=float)
        hist, index = compress_with_index(x, t_x, big_t)
        expected = model.conditional_expected_purchases(horizon_days, hist.frequency,
                                                        hist.recency, hist.T)[index]
        interval = forecast.purchase_distribution(model, horizon_days, hist.frequency,
                                                  hist.recency, hist.T).quantiles(levels)[index]
        for r, e, (lo, hi) in zip(batch, expected, interval, strict=True):
            churn = "" if r[7] is None else f"{r[7]:.6f}"
            spend = ["" if v is None else f"{v:.2f}" for v in (r[14], r[15])]
            writer.writerow((r[0], r[9] or "", r[10] or "", r[11] or "", r[1], r[2], r[3],
                             f"{r[4]:.2f}", f"{r[5]:.6f}", f"{e:.6f}", f"{r[6]:.2f}", churn,
                             r[8] or "", r[12] or "", lo, hi, *spend, r[13] or ""))
        batch.clear()

    for row in reads.iter_run_scores(conn, run["run_id"], _BATCH):
        batch.append(row)
        n += 1
        if len(batch) >= _BATCH:
            flush()
    if batch:
        flush()
    return n
