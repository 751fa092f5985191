"""Scoring runs and the live models: ``GET /v1/models/active``, ``GET /v1/scoring-runs/{id}``."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import require
from api.schemas import RunSchema
from api.services import services
from crm_service import score_store
from crm_service.errors import NotFoundError

blp = Blueprint("scoring", __name__, url_prefix="/v1", description="Scoring runs and models")


def _jsonable(run: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()}


@blp.route("/models/active")
class ActiveModels(MethodView):
    """The parameters behind the scores readers see now."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, RunSchema)
    @blp.alt_response(404, description="no run published yet")
    @require("scores:read")
    def get(self):
        """The live run: fitted BG/NBD and Gamma-Gamma parameters, SEs, holdout metrics."""
        with services().pool.connection() as conn:
            run = score_store.active_run(conn)
        if run is None:
            raise NotFoundError("no scoring run has been published yet")
        return _jsonable(run)


@blp.route("/scoring-runs/<int:run_id>")
class ScoringRun(MethodView):
    """One scoring run, running, succeeded or failed."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, RunSchema)
    @blp.alt_response(404, description="no such run")
    @require("scores:read")
    def get(self, run_id: int):
        """Status, counts, models and, for a failed run, the reason."""
        with services().pool.connection() as conn:
            run = score_store.run_record(conn, run_id)
        if run is None:
            raise NotFoundError(f"no scoring run {run_id}")
        return _jsonable(run)
