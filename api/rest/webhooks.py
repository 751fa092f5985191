"""Webhook subscriptions: ``/v1/webhooks`` (scope ``webhooks:write``)."""

from __future__ import annotations

from typing import Any

from flask import g, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from api.auth import require
from api.services import services
from crm_service.triggers import webhooks
from crm_service.triggers.ssrf import MAX_URL
from crm_service.vocabulary import EVENT_TYPES

blp = Blueprint("webhooks", __name__, url_prefix="/v1", description="Webhooks")


class FiltersSchema(Schema):
    """Narrow lifecycle events by the customer's new tier and value segment."""

    tiers = fields.List(fields.String(validate=validate.OneOf(webhooks.TIERS)),
                        validate=validate.Length(min=1, max=4),
                        metadata={"example": ["dormant"]})
    value_segments = fields.List(
        fields.String(validate=validate.OneOf(webhooks.VALUE_SEGMENTS)),
        validate=validate.Length(min=1, max=3), metadata={"example": ["high"]})


class WebhookCreateSchema(Schema):
    """A subscription request."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL),
                        metadata={"pattern": "^https?://",
                                  "description": "https URL of the receiver (http and private "
                                                 "addresses only for CRM_WEBHOOK_ALLOW_HOSTS)"})
    events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), required=True,
                         validate=validate.Length(min=1, max=len(EVENT_TYPES)))
    filters = fields.Nested(FiltersSchema, load_default=None)
    description = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(max=200))


class DeliveryCountsSchema(Schema):
    """Deliveries by status."""

    pending = fields.Integer()
    delivered = fields.Integer()
    failed = fields.Integer()


class WebhookSchema(Schema):
    """A subscription and its delivery state."""

    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String())
    filters = fields.Dict()
    description = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": ["active", "disabled"]})
    disabled_reason = fields.String(allow_none=True)
    disabled_at = fields.String(allow_none=True)
    consecutive_failures = fields.Integer()
    failing_since = fields.String(allow_none=True)
    paused_until = fields.String(allow_none=True, metadata={
        "description": "after a failure, no delivery is tried before this (backoff)"})
    created_at = fields.String()
    after_event = fields.String(metadata={
        "description": "events up to this id have been queued for this subscription"})
    deliveries = fields.Nested(DeliveryCountsSchema)


class WebhookCreatedSchema(WebhookSchema):
    """The new subscription, with its signing secret (shown only here)."""

    secret = fields.String(metadata={"description": "signing secret; store it now"})


class WebhookListSchema(Schema):
    """All subscriptions."""

    webhooks = fields.List(fields.Nested(WebhookSchema))


class DeliveryQuerySchema(Schema):
    """Which deliveries, and the page."""

    status = fields.String(validate=validate.OneOf(["pending", "delivered", "failed"]))
    before = fields.String(validate=validate.Length(max=20),
                           metadata={"description": "next_cursor of the previous page"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class AttemptSchema(Schema):
    """One try to deliver."""

    attempt = fields.Integer()
    started_at = fields.String()
    duration_ms = fields.Float()
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)


class DeliverySchema(Schema):
    """One event for one subscription, with its attempts."""

    delivery_id = fields.String(metadata={"description": "the webhook-id header; the same on "
                                                         "every retry"})
    event_id = fields.String()
    event_type = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": ["pending", "delivered", "failed"]})
    attempts = fields.Integer()
    next_attempt_at = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.String()
    attempt_log = fields.List(fields.Nested(AttemptSchema))


class DeliveryPageSchema(Schema):
    """A page of deliveries."""

    deliveries = fields.List(fields.Nested(DeliverySchema))
    next_cursor = fields.String(allow_none=True)


_HOOK = {"id": "3", "url": "https://hooks.example.com/crm", "events": ["vip.entered",
         "dormant.entered"], "filters": {"value_segments": ["high"]},
         "description": "VIP care and VIP win-back", "status": "active",
         "disabled_reason": None, "disabled_at": None, "consecutive_failures": 0,
         "failing_since": None, "paused_until": None,
         "created_at": "2026-11-22T09:30:00+00:00", "after_event": "1042",
         "deliveries": {"pending": 0, "delivered": 17, "failed": 0}}
_CREATE = {"url": "https://hooks.example.com/crm", "events": ["vip.entered", "dormant.entered"],
           "filters": {"value_segments": ["high"]}, "description": "VIP care and VIP win-back"}
_DELIVERIES = {"deliveries": [{
    "delivery_id": "5b0c3f0e-8a59-4c1e-9d8e-2f1f0b7c9a11", "event_id": "1043",
    "event_type": "dormant.entered", "status": "delivered", "attempts": 2,
    "next_attempt_at": None, "delivered_at": "2026-11-22T02:01:12+00:00",
    "last_status_code": 200, "last_error": None, "created_at": "2026-11-22T02:00:08+00:00",
    "attempt_log": [
        {"attempt": 1, "started_at": "2026-11-22T02:00:08+00:00", "duration_ms": 10000.4,
         "status_code": None, "error": "timed out after 10 s"},
        {"attempt": 2, "started_at": "2026-11-22T02:00:41+00:00", "duration_ms": 35.2,
         "status_code": 200, "error": None}]}], "next_cursor": None}

_DOC: dict[str, Any] = {"security": [{"bearerAuth": []}]}


@blp.route("/webhooks")
class Webhooks(MethodView):
    """Subscriptions that receive lifecycle events as signed HTTP POSTs."""

    @blp.doc(**_DOC)
    @blp.arguments(WebhookCreateSchema, example=_CREATE)
    @blp.response(201, WebhookCreatedSchema,
                  example={**_HOOK, "deliveries": {"pending": 0, "delivered": 0, "failed": 0},
                           "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8yQQAl5R7Q8="})
    @blp.alt_response(422, description="a refused URL (not https, private address, does not "
                                       "resolve), an unknown event type or filter value")
    @require("webhooks:write")
    def post(self, body):
        """Subscribe a receiver to event types, optionally filtered by tier or value segment.

        It receives events published from now on. Each delivery is a POST of the event (as
        ``GET /v1/events`` shows it) with headers ``webhook-id`` (delivery id, the same on
        retries), ``webhook-timestamp``, ``webhook-signature`` and ``crm-event-type``; see the
        README for verifying the signature. Any 2xx is success; anything else (or no answer
        within ``CRM_WEBHOOK_TIMEOUT_SECONDS``) is retried with exponential backoff for 24 h,
        then the subscription is disabled with the reason.
        """
        with services().pool.connection() as conn:
            hook = webhooks.create(conn, services().settings, url=body["url"],
                                   types=body["events"], filters=body["filters"],
                                   description=body["description"], created_by=g.api_key.id)
        hook["deliveries"] = {"pending": 0, "delivered": 0, "failed": 0}
        return hook, 201, {"Location": url_for("webhooks.Webhook", webhook_id=hook["id"])}

    @blp.doc(**_DOC)
    @blp.response(200, WebhookListSchema, example={"webhooks": [_HOOK]})
    @require("webhooks:write")
    def get(self):
        """All subscriptions with their status and delivery counts (never their secrets)."""
        with services().reader.connection() as conn:
            return {"webhooks": webhooks.list_all(conn)}


@blp.route("/webhooks/<webhook_id>")
class Webhook(MethodView):
    """One subscription."""

    @blp.doc(**_DOC)
    @blp.response(200, WebhookSchema, example=_HOOK)
    @blp.alt_response(404, description="no such subscription")
    @require("webhooks:write")
    def get(self, webhook_id):
        """Status (``disabled`` with ``disabled_reason``), failure streak, delivery counts."""
        with services().reader.connection() as conn:
            return webhooks.get(conn, webhook_id)

    @blp.doc(**_DOC)
    @blp.response(204)
    @blp.alt_response(404, description="no such subscription")
    @require("webhooks:write")
    def delete(self, webhook_id):
        """Unsubscribe: queued deliveries are dropped with the subscription."""
        with services().pool.connection() as conn:
            webhooks.delete(conn, webhook_id)
        return None


@blp.route("/webhooks/<webhook_id>/enable")
class WebhookEnable(MethodView):
    """Re-activate a disabled subscription."""

    @blp.doc(**_DOC)
    @blp.response(200, WebhookSchema, example=_HOOK)
    @blp.alt_response(404, description="no such subscription")
    @require("webhooks:write")
    def post(self, webhook_id):
        """Clear the failure state and retry queued deliveries now.

        Events published while it was disabled are delivered too.
        """
        with services().pool.connection() as conn:
            return webhooks.enable(conn, webhook_id)


@blp.route("/webhooks/<webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    """Deliveries and every attempt."""

    @blp.doc(**_DOC)
    @blp.arguments(DeliveryQuerySchema, location="query")
    @blp.response(200, DeliveryPageSchema, example=_DELIVERIES)
    @blp.alt_response(404, description="no such subscription")
    @require("webhooks:write")
    def get(self, query, webhook_id):
        """Deliveries, newest event first, with their attempt logs.

        Each has its status, attempt count, next try, and every attempt's time, duration, HTTP
        status or error.
        """
        with services().reader.connection() as conn:
            return webhooks.deliveries(conn, webhook_id, status=query.get("status"),
                                       before=query.get("before"), limit=query["limit"])
