"""The event feed: ``GET /v1/events``."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from api.auth import require
from api.services import services
from crm_service.triggers import events
from crm_service.vocabulary import EVENT_TYPES

blp = Blueprint("events", __name__, url_prefix="/v1", description="Lifecycle events")


class EventQuerySchema(Schema):
    """Where to resume, which types, how many."""

    after = fields.String(validate=validate.Regexp(r"^[0-9]{0,19}$"), metadata={
        "description": "next_cursor of the previous answer; empty or absent: from the start",
        "example": "1042"})
    types = fields.String(validate=validate.Length(max=200), metadata={
        "description": "comma-separated: " + ", ".join(EVENT_TYPES),
        "example": "vip.entered,dormant.entered"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class EventSchema(Schema):
    """One lifecycle event."""

    id = fields.String(metadata={"example": "1043"})
    type = fields.String(metadata={"enum": list(EVENT_TYPES)})
    customer_id = fields.String(allow_none=True)
    run_id = fields.Integer(allow_none=True)
    occurred_at = fields.String()
    data = fields.Dict()


class EventPageSchema(Schema):
    """Events in order and the cursor to resume from."""

    events = fields.List(fields.Nested(EventSchema))
    next_cursor = fields.String(metadata={"description": "pass as after next time (always set)"})
    has_more = fields.Boolean()


_EXAMPLE = {"events": [{
    "id": "1043", "type": "dormant.entered", "customer_id": "C-10023", "run_id": 12,
    "occurred_at": "2026-11-22T02:00:07+00:00",
    "data": {"customer_id": "C-10023", "run_id": 12, "as_of": "2026-11-21",
             "from_tier": "high_value", "to_tier": "dormant", "value_segment": "high",
             "rfm_segment": "at_risk", "recommended_action": "vip_win_back",
             "previous_churn_risk": "medium", "churn_risk": "high",
             "churn_probability": 0.93, "clv_12m": 12.4}}],
    "next_cursor": "1043", "has_more": False}


@blp.route("/events")
class Events(MethodView):
    """Tier changes and other lifecycle events, as a resumable feed."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(EventQuerySchema, location="query")
    @blp.response(200, EventPageSchema, example=_EXAMPLE)
    @blp.alt_response(422, description="a malformed cursor, an unknown type, or a bad limit")
    @require("scores:read")
    def get(self, query):
        """Events after ``after``, oldest first, at most ``limit``.

        Each published scoring run appends, for every customer whose state changed against the
        previous live run: ``tier.changed``, ``vip.entered``, ``vip.lost``, ``dormant.entered``,
        ``churn_risk.raised``. ``data`` carries the tiers, value and RFM segment, action, churn
        risk and CLV (no personal data). Store ``next_cursor`` and pass it back as ``after``:
        no event is skipped or repeated. ``has_more``: ask again at once.
        """
        after = events.parse_cursor(query.get("after"))
        types = events.parse_types(query.get("types"))
        with services().reader.connection() as conn:
            return events.feed(conn, after=after, types=types, limit=query["limit"])
