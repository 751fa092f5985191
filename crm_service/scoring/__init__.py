"""Scoring runs: inputs, the pure scoring pipeline, per-run score partitions, retention.

Layout (DESIGN.md §3): ``inputs`` (the types between the seams); ``occasions``, ``pipeline``,
``backtest``, ``churn`` and ``segmenting`` (pure numpy, no I/O); ``session`` (the local engine:
inputs from PostgreSQL, scores into the run's partition); ``summary``, ``runs``,
``publishing``, ``policies``, ``reads`` and ``retention`` (the SQL, one idea each); ``run`` (the
orchestration). May import ``crm_service`` platform modules and ``models``, never ``api``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crm_service.scoring.backtest import InsufficientHistoryError
    from crm_service.scoring.run import RunResult, ScoringFailedError, run_scoring
    from crm_service.scoring.runs import RunTakenOverError

# The run's entry points load numpy, scipy and scikit-learn; `from crm_service.scoring import
# runs` (every CLI command, the API) should not, so they are imported on first use.
_LAZY = {"InsufficientHistoryError": "backtest", "RunResult": "run", "ScoringFailedError": "run",
         "run_scoring": "run", "RunTakenOverError": "runs"}

__all__ = ["InsufficientHistoryError", "RunResult", "RunTakenOverError", "ScoringFailedError",
           "run_scoring"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"crm_service.scoring.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
