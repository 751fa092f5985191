"""The tier policy: ``GET /v1/tier-policy`` and ``PUT /v1/tier-policy`` (admin)."""

from __future__ import annotations

from typing import Any

from flask import g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import require
from api.services import services
from crm_service.scoring.tier_policy import validate_policy
from crm_service.storage import policies
from models.segments import TierPolicy

blp = Blueprint("policy", __name__, url_prefix="/v1", description="Tier policy")

_EXAMPLE = {**TierPolicy().as_dict(), "dormant_days": 120}


def _policy(version: int, policy: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, **policy}


@blp.route("/tier-policy")
class Policy(MethodView):
    """Tier thresholds, value segment shares and the action mapping, versioned."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={"version": 1, **TierPolicy().as_dict()})
    @require("scores:read")
    def get(self):
        """The policy in force (the next scoring run uses it); ``version`` is stored per run."""
        with services().pool.connection() as conn:
            version, policy = policies.current_tier_policy(conn)
        return _policy(version, policy)

    @blp.doc(security=[{"bearerAuth": []}], requestBody={
        "required": True, "content": {"application/json": {
            "schema": {"type": "object", "additionalProperties": True}, "example": _EXAMPLE}}})
    @blp.response(200, example={"version": 2, **_EXAMPLE})
    @blp.alt_response(422, description="a field that is unknown, out of range or inconsistent")
    @require("admin")
    def put(self):
        """Replace the policy: fields left out take their defaults; the result is a new version.

        Validation: ``new_days`` 1-3650 < ``dormant_days`` ≤ 3650; shares strictly between 0
        and 1; ``high_value_keep_share`` ≥ ``high_value_share``; the value segment shares sum
        to at most 1; ``actions`` maps the situations ``new``, ``active``,
        ``active_high_churn_risk``, ``high_value``, ``dormant``, ``dormant_high_value_segment``
        to action names.
        """
        policy = validate_policy(request.get_json(), "request body")  # 400 if malformed
        with services().pool.connection() as conn:
            version = policies.set_tier_policy(conn, policy, f"api key {g.api_key.id}")
        return _policy(version, policy)
