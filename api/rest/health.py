"""Liveness and readiness probes."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api.errors import ApiProblem
from api.schemas import HealthSchema
from api.services import services
from crm_service.platform import db

blp = Blueprint("health", __name__, description="Probes for load balancers and orchestrators")


@blp.route("/healthz")
class Health(MethodView):
    """Process liveness."""

    @blp.response(200, HealthSchema, example={"status": "ok"})
    def get(self):
        """The process is up (does not touch the database)."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    """Readiness: the database answers."""

    @blp.response(200, HealthSchema, example={"status": "ok"})
    @blp.alt_response(503, description="database unreachable")
    def get(self):
        """Ready to serve: PostgreSQL answers within 2 s."""
        try:
            db.ping(services().pool, timeout=2.0)
        except Exception as exc:  # any failure means "not ready"
            raise ApiProblem(503, "Not ready", f"database unreachable: {type(exc).__name__}",
                             slug="not-ready", headers={"Retry-After": "5"}) from None
        return {"status": "ready"}
