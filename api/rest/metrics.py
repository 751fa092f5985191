"""``GET /metrics``: Prometheus text format, for a key with ``metrics:read`` (or ``admin``)."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import require
from api.services import services
from crm_service.platform import metrics

blp = Blueprint("metrics", __name__, description="Prometheus metrics")

EXAMPLE = "\n".join([
    "# HELP crm_http_requests_total HTTP requests answered, by method, route template and status.",
    "# TYPE crm_http_requests_total counter",
    'crm_http_requests_total{method="GET",route="/v1/customers/<customer_id:customer_id>/tier",'
    'status="200"} 18230.0',
    "# HELP crm_live_customers_by_tier Customers per tier in the live run.",
    "# TYPE crm_live_customers_by_tier gauge",
    'crm_live_customers_by_tier{tier="dormant"} 1630.0', ""])


@blp.route("/metrics")
class Metrics(MethodView):
    """What the service counts and what its database holds, for Prometheus."""

    @blp.doc(security=[{"bearerAuth": []}], responses={"200": {
        "description": "the metrics (Prometheus text exposition format 0.0.4)",
        "content": {"text/plain": {"example": EXAMPLE}}}})
    @require("metrics:read")
    def get(self):
        """HTTP requests and latency by route template; runs, tiers, churn bands; webhooks; pools.

        Summed over every API process and the worker beside them (multiprocess mode). No
        customer id, email, phone or key in any label.
        """
        svc = services()
        body = metrics.render(svc.reader.connection,
                              {"writer": svc.pool, "reader": svc.reader, "lane": svc.lane})
        return Response(body, mimetype="text/plain", content_type=metrics.CONTENT_TYPE,
                        headers={"Cache-Control": "no-store"})
