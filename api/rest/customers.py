"""One customer: ``GET /v1/customers/{id}`` (profile), ``/tier`` (fast path), and search."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, g
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from api.auth import require
from api.schemas import (
    CustomerProfileSchema,
    CustomerSearchQuerySchema,
    CustomerSearchSchema,
    CustomerTierSchema,
)
from api.services import services
from crm_service.customers import cards, profiles
from crm_service.customers.ids import check_customer_id
from crm_service.errors import NotFoundError

blp = Blueprint("customers", __name__, url_prefix="/v1", description="One customer")

_TIER_EXAMPLE = {
    "customer_id": "C-10023", "run_id": 12, "as_of": "2026-11-21", "provisional": False,
    "provisional_as_of": None, "tier": "high_value", "tier_since": "2026-09-30",
    "value_segment": "high", "rfm_segment": "champions", "recommended_action": "vip_care",
    "churn_risk": "low", "churn_probability": 0.08, "clv_12m": 1834.2, "p_alive": 0.97,
    "p_alive_note": None,
    "recent_transitions": [{"run_id": 9, "as_of": "2026-09-30", "from_tier": "active",
                            "to_tier": "high_value"}],
    "merged_into": None}

_PROFILE_EXAMPLE = {
    "customer_id": "C-10023", "created_at": "2025-03-02T08:11:40+00:00",
    "updated_at": "2026-06-01T10:00:00+00:00",
    "contact": {"email": "li.wei@example.com", "phone": "+86 138 0013 8000", "name": "Li Wei"},
    "identities": [{"channel": "jd", "external_id": "jd_88231"}],
    "orders_by_channel": [{"channel": "tmall", "paid_orders": 7, "refunded_orders": 1,
                           "cancelled_orders": 0, "net_spend": 1532.4,
                           "first_order_at": "2025-03-02T08:11:00+00:00",
                           "last_order_at": "2026-11-01T12:30:00+00:00"}],
    "run_id": 12, "as_of": "2026-11-21", "scored_at": "2026-11-22T02:03:11+00:00",
    "churn_horizon_days": 90, "provisional": False, "tier": "high_value",
    "tier_since": "2026-09-30", "value_segment": "high", "rfm_segment": "champions",
    "recommended_action": "vip_care",
    "scores": {"frequency": 6, "recency_days": 609, "t_days": 629, "p_alive": 0.97,
               "clv_12m": 1834.2, "churn_probability": 0.08, "churn_risk": "low",
               "expected_purchases_90": 0.9, "expected_next_order": "2026-12-19",
               "purchases_365_p10": 2, "purchases_365_p90": 6, "spend_365_p10": 420.0,
               "spend_365_p90": 1980.0, "p_alive_note": None},
    "recent_transitions": [{"run_id": 9, "as_of": "2026-09-30", "from_tier": "active",
                            "to_tier": "high_value"}],
    "recent_orders": [{"channel": "tmall", "order_id": "TM20261101-0042",
                       "ordered_at": "2026-11-01T04:30:00+00:00", "amount": 219.0,
                       "status": "paid"}],
    "aliases": [{"customer_id": "C-20911", "merge_id": "17"}],
    "merged_into": None}


# The answers' fields, in order, from their one definition (crm_service.customers.cards).
_TIER_FIELDS = cards.names(cards.TIER_CARD)
_PROFILE_FIELDS = cards.names(cards.PROFILE_CARD)


def _run_fields(found: dict[str, Any]) -> dict[str, Any]:
    run = found["run"] or {}
    return {"run_id": run.get("run_id"),
            "as_of": run["as_of"].isoformat() if run.get("as_of") else None,
            "scored_at": run["scored_at"].isoformat() if run.get("scored_at") else None,
            "churn_horizon_days": run.get("churn_horizon_days")}


@blp.route("/customers/<customer_id:customer_id>/tier")
class CustomerTier(MethodView):
    """The small, fast answer for agents and campaign tools."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, CustomerTierSchema, example=_TIER_EXAMPLE)
    @blp.alt_response(404, description="no run published yet, or the customer has no paid "
                                       "order")
    @blp.alt_response(422, description="not a valid customer id")
    @require("scores:read")
    def get(self, customer_id: str):
        """Tier and since when, value and RFM segment, action, churn risk, latest changes.

        From the live run; when the customer's orders changed after that run started, the
        answer is recomputed from the run's models and policy and flagged ``provisional``.
        """
        check_customer_id(customer_id)
        with services().reader.connection() as conn:
            found = profiles.lookup(conn, customer_id)
        if found is None:
            raise NotFoundError("no scoring run has been published yet")
        scores = found["scores"]
        if scores is None or scores.get("tier") is None:
            run = found["run"]
            raise NotFoundError(f"customer {customer_id!r} has no tier in the live run "
                                f"(run {run['run_id']} as of {run['as_of']}) and no paid "
                                "order since")
        run = _run_fields(found)
        own = {"customer_id": found["customer_id"], "run_id": run["run_id"],
               "as_of": run["as_of"], "provisional": found["provisional"],
               "recent_transitions": found["recent_transitions"],
               "merged_into": found["merged_into"]}
        # Every other field of the card is the score of that name.
        body = {k: own[k] if k in own else scores.get(k) for k in _TIER_FIELDS}
        # The hot path for agents and tools: the body is already plain JSON values, so it is
        # encoded directly (CustomerTierSchema documents it; tests check the two agree).
        return current_app.response_class(json.dumps(body, separators=(",", ":")),
                                          mimetype="application/json")


@blp.route("/customers/<customer_id:customer_id>")
class CustomerProfile(MethodView):
    """Everything about one customer."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, CustomerProfileSchema, example=_PROFILE_EXAMPLE)
    @blp.alt_response(404, description="no such customer")
    @blp.alt_response(422, description="not a valid customer id")
    @require("scores:read", "customers:read")
    def get(self, customer_id: str):
        """Profile, orders per channel, every score, tier, segments, action and history.

        Needs ``scores:read`` or ``customers:read``. Contact details (email, phone, name) and
        channel identities are personal data: they are included only for a key with
        ``customers:read`` (or admin), and are null otherwise. Scores come from the live run,
        or are provisional (recomputed now) when the customer's orders changed since it.
        """
        check_customer_id(customer_id)
        with services().reader.connection() as conn:
            found = profiles.lookup(conn, customer_id, profile=True)
        if found is None:
            raise NotFoundError(f"no customer {customer_id!r}")
        pii = g.api_key.allows("customers:read")
        customer, scores = found["customer"], found["scores"]
        own = {
            "customer_id": found["customer_id"],
            "merged_into": found["merged_into"],
            "recent_orders": found["recent_orders"],
            "aliases": found["aliases"],
            "created_at": customer["created_at"], "updated_at": customer["updated_at"],
            "contact": {k: customer[k] for k in ("email", "phone", "name")} if pii else None,
            "identities": found["identities"] if pii else None,
            "orders_by_channel": found["orders_by_channel"],
            **_run_fields(found),
            "provisional": found["provisional"],
            "scores": scores,
            "recent_transitions": found["recent_transitions"],
        }
        # The segments of the card are the scores of that name.
        return {k: own[k] if k in own else (scores or {}).get(k) for k in _PROFILE_FIELDS}

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={
        "customer_ref": "3f1c9a0d5e...", "event_id": "1044",
        "removed": {"orders": 7, "identities": 2, "profile": 1, "scores": 5,
                    "tier_transitions": 3, "webhook_deliveries": 2, "events": 4,
                    "idempotency_records": 1}})
    @blp.alt_response(404, description="nothing is held about this customer id")
    @blp.alt_response(422, description="not a valid customer id")
    @require("admin")
    def delete(self, customer_id: str):
        """Erase the customer (GDPR Art. 17): scope ``admin``.

        In one transaction: profile, identities, orders, scores of every run, tier history,
        lifecycle events (and their queued webhook deliveries) and stored Idempotency-Key
        responses that mention the customer are deleted. The id is kept only as a keyed hash
        (``customer_ref``) on a suppression list: later orders or profiles for it are rejected.
        A ``customer.erased`` event carrying just ``customer_ref`` (the reference every
        lifecycle event and the export carry) lets downstream tools erase their copies.
        """
        from crm_service.privacy import erasure

        check_customer_id(customer_id)
        with services().pool.connection() as conn:
            return erasure.erase(conn, services().settings, customer_id)


@blp.route("/customers/<customer_id:customer_id>/export")
class CustomerExport(MethodView):
    """Everything held about one customer (GDPR Art. 20)."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={
        "customer_id": "C-10023", "customer_ref": "3f1c9a0d5e...",
        "profile": {"email": "li.na@example.com", "phone": "+8613800138000", "name": "Li Na",
                    "created_at": "2026-01-05T10:00:00+00:00",
                    "updated_at": "2026-03-01T08:00:00+00:00"},
        "identities": [{"channel": "tmall", "external_id": "tb_88231",
                        "linked_at": "2026-01-05T10:00:00+00:00"}],
        "orders": [{"channel": "tmall", "order_id": "T-1", "ordered_at":
                    "2026-01-05T02:30:00+00:00", "amount": "129.90", "currency": "CNY",
                    "status": "paid", "received_at": "2026-01-05T10:00:00+00:00",
                    "updated_at": "2026-01-05T10:00:00+00:00"}],
        "scores": [{"run_id": 12, "tier": "active", "clv_12m": 310.5}],
        "tier_history": [{"run_id": 12, "from_tier": "new", "to_tier": "active"}],
        "events": [{"id": "1043", "type": "tier.changed", "run_id": 12,
                    "occurred_at": "2026-11-22T02:00:07+00:00", "data": {}}]})
    @blp.alt_response(404, description="nothing is held about this customer id")
    @require("customers:read")
    def get(self, customer_id: str):
        """All data held about the customer, as JSON: scope ``customers:read``.

        Profile and contact details, channel identities, every order, the scores of every
        run, tier history and lifecycle events.
        """
        from crm_service.privacy import erasure

        check_customer_id(customer_id)
        with services().reader.connection() as conn:
            return erasure.export(conn, services().settings, customer_id)


@blp.route("/customers/search")
class CustomerSearch(MethodView):
    """Find a customer by contact or channel account."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(CustomerSearchQuerySchema, location="query")
    @blp.response(200, CustomerSearchSchema, example={"matches": [{
        "customer_id": "C-10023", "email": "li.wei@example.com", "phone": "+86 138 0013 8000",
        "name": "Li Wei", "tier": "high_value", "value_segment": "high",
        "recommended_action": "vip_care"}]})
    @blp.alt_response(422, description="not exactly one of email, phone, channel+external_id; "
                                       "or a value that cannot be an email or phone")
    @require("customers:read")
    def get(self, query):
        """Exact match after normalisation: ``?email=``, ``?phone=`` or ``?channel=&external_id=``.

        Emails match case-insensitively; phones by their digits ("+86 138-0013-8000" finds
        "+8613800138000"; with CRM_PHONE_COUNTRY_CODE=86, "138 0013 8000" finds it too); a
        channel identity by channel and external id. An empty list when nothing matches. Needs
        ``customers:read`` (the query is personal data).
        """
        with services().reader.connection() as conn:
            return {"matches": profiles.search(
                conn, **query, country_code=services().settings.phone_country_code)}


class MergeInSchema(Schema):
    """Which customers to merge into the one in the path."""

    from_ = fields.List(fields.String(validate=validate.Length(min=1, max=128)), required=True,
                        data_key="from", validate=validate.Length(min=1, max=50),
                        metadata={"example": ["C-20911", "cx-5f1c0a9b7e2d4c6a8b0e"]})
    reason = fields.String(allow_none=True, validate=validate.Length(max=500), metadata={
        "example": "same person: caller confirmed both accounts",
        "description": "kept with the merge record (erased with the customer)"})


class UnmergeInSchema(Schema):
    """Which merge to undo (default: the newest into this customer)."""

    merge_id = fields.String(validate=validate.Regexp(r"^[0-9]{1,18}$"),
                             metadata={"example": "17"})


_MERGE_EXAMPLE = {
    "merge_id": "17", "customer_id": "C-10023", "merged_ids": ["C-20911"], "actor": "k_3f9a",
    "reason": "same person", "merged_at": "2026-12-08T09:12:00+00:00", "undone_at": None,
    "moved": {"orders": 3, "identities": 1, "aliases": [], "contact_fields": ["email"]}}


@blp.route("/customers/<customer_id:customer_id>/merge")
class CustomerMerge(MethodView):
    """Merge other customers into this one (the survivor)."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(MergeInSchema, example={"from": ["C-20911"],
                                           "reason": "same person: caller confirmed"})
    @blp.response(200, example=_MERGE_EXAMPLE)
    @blp.alt_response(404, description="the survivor or a customer in `from` does not exist")
    @blp.alt_response(409, description="a customer is already merged (or the survivor is)")
    @blp.alt_response(422, description="empty or over-long `from`, or the survivor in it")
    @require("customers:write")
    def post(self, body, customer_id: str):
        """One transaction: the survivor takes the others' orders, identities and contact data.

        The merged ids become aliases: every lookup of them (profile, /tier, search, export,
        erasure, the console) answers with the survivor and says so (``merged_into``); orders
        and profiles later sent for them land on the survivor. A ``customer.merged`` event
        carries the survivor's and the merged customers' ``customer_ref``. The survivor's
        answers are provisional until the next run scores the merged history.
        """
        from crm_service.customers import identities

        check_customer_id(customer_id)
        for other in body["from_"]:
            check_customer_id(other)
        with services().pool.connection() as conn:
            return identities.merge(conn, services().settings, customer_id, body["from_"],
                                    actor=g.api_key.id, reason=body.get("reason"))


@blp.route("/customers/<customer_id:customer_id>/unmerge")
class CustomerUnmerge(MethodView):
    """Undo a merge into this customer."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(UnmergeInSchema, example={"merge_id": "17"})
    @blp.response(200, example={**_MERGE_EXAMPLE, "undone_at": "2026-12-08T10:00:00+00:00",
                                "restored": {"orders": 3, "identities": 1},
                                "event_id": "1201"})
    @blp.alt_response(404, description="no such merge into this customer")
    @blp.alt_response(409, description="undone already, or a later merge depends on it")
    @require("customers:write")
    def post(self, body, customer_id: str):
        """Put back what the merge moved: orders, identities, aliases, filled contact fields.

        Possible while no later merge depends on it (the survivor was not merged on since).
        Orders sent for a merged id after the merge stay with the survivor. Emits
        ``customer.unmerged``.
        """
        from crm_service.customers import identities

        check_customer_id(customer_id)
        merge_id = int(body["merge_id"]) if body.get("merge_id") else None
        with services().pool.connection() as conn:
            return identities.unmerge(conn, services().settings, customer_id, merge_id,
                                      actor=g.api_key.id)


@blp.route("/customers/<customer_id:customer_id>/merges")
class CustomerMerges(MethodView):
    """The merges naming this customer."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={"merges": [_MERGE_EXAMPLE]})
    @require("customers:read")
    def get(self, customer_id: str):
        """Every merge naming the customer (as survivor or merged), newest first."""
        from crm_service.customers import identities

        check_customer_id(customer_id)
        with services().reader.connection() as conn:
            return {"merges": identities.history(conn, customer_id)}


@blp.route("/identity-candidates")
class IdentityCandidates(MethodView):
    """Pairs the linking rules matched but left for review."""

    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, example={"candidates": [{
        "customer_a": "cx-0a1b2c3d4e5f60718293", "customer_b": "cx-9f8e7d6c5b4a39281706",
        "rule": "phone", "channel": "tmall", "found_at": "2026-12-08T09:00:00+00:00"}]})
    @require("customers:read")
    def get(self):
        """Customers sharing a phone or email who each hold a different account on one channel.

        Usually two people sharing a phone; merge them by hand if they are one person.
        """
        from crm_service.customers import identities

        with services().reader.connection() as conn:
            return {"candidates": identities.review_list(conn)}
