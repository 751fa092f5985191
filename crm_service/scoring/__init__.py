"""Scoring runs: the pure pipeline from a run's inputs to its scores, and the run's orchestration.

``inputs`` (the types between the seams); ``occasions``, ``pipeline``, ``backtest``, ``churn``
and ``segmenting`` (pure numpy, no I/O); ``dates`` (which day a run scores as of); ``run`` (one
run from start to published). Also what is read off a published run: ``dashboard``, ``plots``,
``predictions``, and ``tier_policy`` (the policy as users send it). The run's SQL (summary,
queue, publishing, reads, retention, policy versions, the local engine) is in
``crm_service.storage``. May import ``crm_service.storage``, ``crm_service.platform`` and
``models``, never ``api``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crm_service.scoring.backtest import InsufficientHistoryError
    from crm_service.scoring.run import RunResult, ScoringFailedError, run_scoring
    from crm_service.storage.runs import RunTakenOverError

# The run's entry points load numpy, scipy and scikit-learn; `from crm_service.scoring import
# runs` (every CLI command, the API) should not, so they are imported on first use.
_LAZY = {"InsufficientHistoryError": "crm_service.scoring.backtest",
         "RunResult": "crm_service.scoring.run", "ScoringFailedError": "crm_service.scoring.run",
         "run_scoring": "crm_service.scoring.run", "RunTakenOverError": "crm_service.storage.runs"}

__all__ = ["InsufficientHistoryError", "RunResult", "RunTakenOverError", "ScoringFailedError",
           "run_scoring"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
