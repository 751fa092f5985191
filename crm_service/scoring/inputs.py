"""What a scoring run reads and what it produces: plain arrays, no database.

The run is a pipeline between two seams (DESIGN.md §3): an engine loads :class:`RunInputs`
(the summary, the churn inputs, the live run's tiers, the tier policy) from wherever the orders
live, :func:`crm_service.scoring.pipeline.score_base` turns them into a :class:`ScoredRun`
without any I/O, and the engine writes the scored run to the run's own partition, which
publishing attaches. Arrays are in *summary order*: row ``i`` is the ``i``-th customer of the
summary, and customer ids never enter Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.segments import TierPolicy


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
    """Per-customer RFM summary as of ``as_of`` (DESIGN.md §2), in summary order.

    ``calibration`` is the same customers' summary as of ``calibration_end`` (the backtest's
    cut-off), for those who had bought by then (``in_calibration``); ``days``, ``repeats`` and
    ``firsts`` count repeat occasions and first purchases per day (the tracking plot).
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

    @property
    def span_days(self) -> int:
        """Days from the first purchase in the base to ``as_of``."""
        return int(self.T.max()) if self.size else 0


@dataclass
class PreviousTiers:
    """The live run's tiers per customer of the new summary (hysteresis, tier since).

    ``code`` is the index in ``models.segments.TIERS`` (-1: not scored in the live run),
    ``since_days`` the days between that tier's start and the new ``as_of``; ``live`` says
    whether any run was live at all (the first run of a database changes no tier).
    """

    code: NDArray[np.int8]
    since_days: NDArray[np.float64]
    live: bool

    @classmethod
    def none(cls, n: int) -> PreviousTiers:
        """No live run: every customer is new to tiering."""
        return cls(np.full(n, -1, dtype=np.int8), np.zeros(n), False)


# Raw per-customer churn aggregates as of a cut-off c, the columns of ChurnInputs' arrays
# (derived features are computed in numpy); `future` counts occasions in (c, c + H], the label
# when the window is in the past.
RAW_CHURN = ("frequency", "recency", "T", "std_interval", "last_interval", "max_interval",
             "occasions_30", "occasions_90", "occasions_180", "spend_30", "spend_90",
             "spend_180", "spend_prev_90", "historic_spend", "channels", "first_channel_share",
             "refund_share", "occasions_365", "spend_365", "active_months", "first_spend",
             "future")


@dataclass
class ChurnInputs:
    """Raw churn aggregates (:data:`RAW_CHURN` columns, float32) the churn stage needs.

    ``windows`` holds, per training or validation cut-off, the (sampled) customers who had
    bought by then, in no particular order; ``now`` the customers of the summary, in summary
    order, as of ``as_of``. ``share`` is the sampled share of customers in the windows.
    """

    windows: dict[date, NDArray[np.float32]]
    now: NDArray[np.float32]
    share: float


@dataclass
class RunConfig:
    """The settings a scoring run depends on (taken from ``Settings`` by the orchestration)."""

    churn_horizon_days: int = 90
    churn_model: str = "auto"
    churn_risk_medium: float = 0.5
    churn_risk_high: float = 0.8

    @property
    def risk_bands(self) -> tuple[float, float]:
        """(medium, high) thresholds of the churn probability."""
        return self.churn_risk_medium, self.churn_risk_high


@dataclass
class RunInputs:
    """Everything the pure pipeline needs, read in one database snapshot."""

    summary: Summary
    previous: PreviousTiers
    policy_version: int
    policy: TierPolicy
    churn: ChurnInputs | None = None
    # The live run's model record: its fits warm-start this run's (a nightly run's data
    # barely moves, so the optimiser starts next to the optimum). Never changes the optimum.
    previous_models: dict[str, Any] = field(default_factory=dict)


# What a run computes per customer, in summary order. NaN in next_order_days means no expected
# next order; the *_code arrays index the names in ScoredRun.labels.
COMPUTED = ("p_alive", "expected_purchases_30", "expected_purchases_90",
            "expected_purchases_365", "next_order_days", "expected_spend", "clv_12m",
            "churn_probability", "tier_code", "value_code", "rfm_recency", "rfm_frequency",
            "rfm_monetary", "rfm_code", "action_code", "tier_since_days",
            "purchases_365_p10", "purchases_365_p90", "spend_365_p10", "spend_365_p90",
            "alive_note_code")


@dataclass
class ScoredRun:
    """The pipeline's result: per-customer arrays, counts and the run's model record."""

    computed: dict[str, NDArray[np.float64]]
    counts: dict[str, Any]
    models: dict[str, Any]
    diagnostics: dict[str, Any]
    labels: dict[str, list[str]]
    policy_version: int
    risk_bands: tuple[float, float]
    churn_artifact: tuple[bytes, dict[str, Any]] | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
