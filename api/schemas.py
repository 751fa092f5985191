"""marshmallow schemas: request/response shapes, and the OpenAPI document built from them."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from crm_service.audiences.audience import SORTS
from crm_service.platform.config import MAX_CHURN_HORIZON, MIN_CHURN_HORIZON
from crm_service.storage.runs import RUN_STATUSES
from crm_service.vocabulary import (
    ALIVE_NOTES,
    CHURN_RISKS,
    ORDER_STATUSES,
    RFM_SEGMENTS,
    TIERS,
    VALUE_SEGMENTS,
)

_MESSAGES: dict[str, str | list[Any] | dict[Any, Any]] = {
    "invalid": "must be a string", "null": "must not be null", "required": "required"}


def _text(**kwargs) -> fields.String:
    """A string field whose type errors read like the service's own."""
    return fields.String(error_messages=_MESSAGES, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON true or false, nothing else (not 1, "yes" or "true")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class AmountField(fields.Field):
    """A JSON number or numeric string; the service checks sign and decimals."""

    default_error_messages = {"null": "must not be null"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValidationError("must be a number or a numeric string")
        return value

    def _jsonschema_type_mapping(self):  # pragma: no cover - documentation only
        return {"oneOf": [{"type": "number"}, {"type": "string"}]}


class OrderInSchema(Schema):
    """One order in a batch. Identity is (channel, order_id)."""

    order_id = _text(required=True, metadata={"example": "TM20240501-0001", "maxLength": 128})
    customer_id = _text(metadata={
        "example": "C-10023", "maxLength": 128,
        "description": "the brand's customer id; required unless buyer_id is given"})
    buyer_id = _text(metadata={
        "example": "tb_88231", "maxLength": 128,
        "description": "the buyer's account on this channel, instead of (or as well as) "
                       "customer_id: a known account gives its customer, a new one creates a "
                       "customer (id cx-...); with both, the account must be the customer's"})
    channel = _text(required=True, metadata={
        "example": "tmall", "description": "tmall, jd, pinduoduo, web, store, ..."})
    ordered_at = _text(required=True, metadata={
        "example": "2024-05-01T10:30:00+08:00",
        "description": "ISO 8601 date or datetime; without an offset it is CRM_TIMEZONE time"})
    amount = AmountField(required=True, metadata={
        "example": 129.9, "description": ">= 0, at most 2 decimals; string or number"})
    currency = _text(allow_none=True, metadata={
        "example": "USD", "description": "defaults to CRM_CURRENCY; any other is rejected"})
    status = _text(allow_none=True, metadata={
        "example": "paid", "enum": ["paid", "refunded", "cancelled"],
        "description": "default paid; case-insensitive"})


class OrderBatchSchema(Schema):
    """A batch of at most 1000 orders."""

    orders = fields.List(fields.Nested(OrderInSchema), required=True)


class IdentitySchema(Schema):
    """A customer's account on one channel."""

    channel = _text(required=True, metadata={"example": "jd"})
    external_id = _text(required=True, metadata={"example": "jd_88231", "maxLength": 128})


class CustomerInSchema(Schema):
    """A profile upsert; an absent field is left unchanged, null clears it."""

    customer_id = _text(metadata={
        "example": "C-10023", "maxLength": 128,
        "description": "required unless channel and buyer_id name the customer's account"})
    channel = _text(metadata={"example": "tmall",
                              "description": "with buyer_id, instead of customer_id"})
    buyer_id = _text(metadata={"example": "tb_88231", "maxLength": 128})
    email = _text(allow_none=True, metadata={"example": "li.wei@example.com"})
    phone = _text(allow_none=True, metadata={"example": "+86 138 0013 8000"})
    name = _text(allow_none=True, metadata={"example": "Li Wei", "maxLength": 200})
    identities = fields.List(fields.Nested(IdentitySchema), allow_none=True)


class CustomerBatchSchema(Schema):
    """A batch of at most 1000 profiles."""

    customers = fields.List(fields.Nested(CustomerInSchema), required=True)


class RecordResultSchema(Schema):
    """What happened to one record of a batch."""

    index = fields.Integer(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(
        ["inserted", "updated", "duplicate", "rejected"]))
    errors = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "field -> reason, when rejected"})
    channel = fields.String()
    order_id = fields.String()
    customer_id = fields.String(metadata={
        "description": "the customer the record landed on (for an order sent by buyer_id, the "
                       "account's customer; for a merged id, the survivor)"})
    merged_into = fields.String(metadata={
        "description": "present when the customer_id sent was merged: the survivor it went to"})


class TotalsSchema(Schema):
    """Count of records per outcome."""

    inserted = fields.Integer()
    updated = fields.Integer()
    duplicate = fields.Integer()
    rejected = fields.Integer()


class BatchResultSchema(Schema):
    """Per-record outcomes of a batch, by index, and totals."""

    results = fields.List(fields.Nested(RecordResultSchema))
    totals = fields.Nested(TotalsSchema)


class HealthSchema(Schema):
    """Liveness/readiness answer."""

    status = fields.String(metadata={"example": "ok"})


class ScoringRunRequestSchema(Schema):
    """Which day to score as of."""

    as_of = fields.Date(metadata={"example": "1998-06-30",
                                  "description": "default: today in CRM_TIMEZONE"})
    churn_horizon_days = fields.Integer(
        strict=True, validate=validate.Range(min=MIN_CHURN_HORIZON, max=MAX_CHURN_HORIZON),
        metadata={"example": 90, "description": "churn = no purchase in the next H days; "
                                                "default CRM_CHURN_HORIZON_DAYS (90)"})
    dry_run = StrictBoolean(load_default=False, metadata={
        "description": "compute everything and report what publishing would do (counts, the "
                       "tier transition matrix against the live run, events per type) without "
                       "publishing: no event, no tier history, the live run stays live"})
    allow_stale = StrictBoolean(load_default=False, metadata={
        "description": "score as of a day more than CRM_MAX_STALE_DAYS (30) after the newest "
                       "paid order (refused otherwise: the whole base would look lapsed)"})


class RunListQuerySchema(Schema):
    """Filters and paging of the run list."""

    status = fields.String(validate=validate.OneOf(RUN_STATUSES))
    dry_run = fields.Boolean(metadata={"description": "only dry runs (true) or only real ones"})
    cursor = fields.String(validate=validate.Length(max=200), metadata={
        "description": "next_cursor of the previous page"})
    limit = fields.Integer(load_default=20, strict=False,
                           validate=validate.Range(min=1, max=100))


class RunSchema(Schema):
    """A scoring run and its fitted models (time unit: days)."""

    run_id = fields.Integer()
    status = fields.String(metadata={"enum": list(RUN_STATUSES)})
    dry_run = fields.Boolean(metadata={
        "description": "a dry run: computed and reported (counts.dry_run), never published"})
    allow_stale = fields.Boolean()
    notice = fields.String(metadata={
        "description": "how as_of was chosen, when it was not given (only in the 202 answer)"})
    progress = fields.String(allow_none=True, metadata={"example": "fitting models"})
    started_at = fields.String(allow_none=True)
    as_of = fields.String(metadata={"example": "1998-06-30"})
    time_unit = fields.String(metadata={"example": "days"})
    timezone = fields.String()
    churn_horizon_days = fields.Integer(metadata={"example": 90})
    created_at = fields.String()
    finished_at = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    previous_run_id = fields.Integer(allow_none=True, metadata={
        "description": "the run that was live when this one was published (tier changes and "
                       "events are computed against it)"})
    scores_retired_at = fields.String(allow_none=True, metadata={
        "description": "when retention dropped this run's score rows (CRM_KEEP_RUNS, "
                       "CRM_KEEP_RUN_DAYS); its record, models and plots stay. null: scores "
                       "kept"})
    counts = fields.Dict(allow_none=True)
    models = fields.Dict(allow_none=True, metadata={
        "description": "bgnbd: params r, alpha, a, b, standard_errors, log_likelihood, holdout;"
                       " gamma_gamma: params p, q, v; churn: used (ml or btyd_baseline), reason,"
                       " validation metrics (roc_auc, brier, ece, top_decile_lift) of both,"
                       " risk_thresholds"})


class ListedRunSchema(Schema):
    """One run in the run list."""

    run_id = fields.Integer()
    status = fields.String(metadata={"enum": list(RUN_STATUSES)})
    dry_run = fields.Boolean()
    live = fields.Boolean(metadata={"description": "the run readers see now"})
    as_of = fields.String()
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    seconds = fields.Float(allow_none=True, metadata={"description": "started to finished"})
    customers = fields.Integer(allow_none=True)
    selected_model = fields.String(allow_none=True, metadata={"example": "pareto_nbd"})
    holdout_mae = fields.Float(allow_none=True, metadata={
        "description": "the selected purchase model's holdout MAE (purchases per customer)"})
    churn = fields.Dict(allow_none=True, metadata={
        "description": "used (ml or btyd_baseline), reason, horizon_days, validation metrics"})
    stage_seconds = fields.Dict(allow_none=True)
    scores_kept = fields.Boolean(metadata={
        "description": "whether the run's score rows are still stored (retention drops them; "
                       "a dry run never keeps them)"})
    scores_retired_at = fields.String(allow_none=True)
    previous_run_id = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    dry_run_report = fields.Dict(allow_none=True, metadata={
        "description": "a dry run's report: events per type publishing would have emitted"})


class RunListSchema(Schema):
    """A page of runs, newest first."""

    items = fields.List(fields.Nested(ListedRunSchema))
    next_cursor = fields.String(allow_none=True)


class PredictionCaseSchema(Schema):
    """A hypothetical customer history, in days."""

    frequency = fields.Integer(required=True, strict=True,
                               validate=validate.Range(min=0, max=100_000),
                               metadata={"example": 3, "description": "repeat purchase days"})
    recency = fields.Float(required=True, validate=validate.Range(min=0, max=36_500),
                           metadata={"example": 120, "description": "first to last purchase"})
    T = fields.Float(required=True, validate=validate.Range(min=0, max=36_500),
                     metadata={"example": 200, "description": "first purchase to today"})
    monetary_value = fields.Float(load_default=0.0, validate=validate.Range(min=0, max=1e9),
                                  metadata={"example": 35.5,
                                            "description": "mean repeat-purchase amount; 0 or"
                                                           " absent: the population mean"})


class PredictionRequestSchema(Schema):
    """What-if cases and the horizons (days) for expected purchases."""

    cases = fields.List(fields.Nested(PredictionCaseSchema), required=True,
                        validate=validate.Length(min=1, max=1000))
    horizons = fields.List(fields.Integer(strict=True, validate=validate.Range(min=0, max=3650)),
                           load_default=lambda: [30, 90, 365],
                           validate=validate.Length(min=1, max=10))


class CustomerScoresSchema(Schema):
    """One customer's scores in the live run (days; money in CRM_CURRENCY)."""

    customer_id = fields.String(metadata={"example": "cdnow-0001"})
    merged_into = fields.String(metadata={
        "description": "present when the id asked for was merged: the scores are the "
                       "survivor's (customer_id)"})
    run_id = fields.Integer(metadata={"example": 3})
    as_of = fields.String(metadata={"example": "1998-06-30"})
    scored_at = fields.String(allow_none=True)
    churn_horizon_days = fields.Integer(metadata={"example": 90})
    frequency = fields.Integer(metadata={"description": "repeat purchase occasions"})
    recency_days = fields.Integer(metadata={"description": "first to last occasion"})
    t_days = fields.Integer(metadata={"description": "first occasion to as_of"})
    monetary_value = fields.Float(metadata={"description": "mean repeat occasion amount"})
    historic_spend = fields.Float()
    first_purchase = fields.String()
    last_purchase = fields.String()
    avg_days_between_orders = fields.Float(allow_none=True)
    p_alive = fields.Float(metadata={"example": 0.82})
    p_alive_note = fields.String(allow_none=True, metadata={
        "enum": list(ALIVE_NOTES),
        "description": "why P(alive) and the churn band may look contradictory: "
                       "not_estimated (BG/NBD is selected and the customer has no repeat "
                       "purchase: its P(alive) is 1 by assumption), infrequent_buyer "
                       "(P(alive) >= 0.9 with a high churn risk: probably still a customer, "
                       "but unlikely to order within the churn horizon); null otherwise"})
    expected_purchases_30 = fields.Float()
    expected_purchases_90 = fields.Float()
    expected_purchases_365 = fields.Float()
    expected_next_order = fields.String(allow_none=True, metadata={
        "description": "as_of + median wait, when P(alive) >= 0.5"})
    expected_spend = fields.Float(allow_none=True)
    clv_12m = fields.Float(allow_none=True)
    purchases_365_p10 = fields.Integer(allow_none=True, metadata={
        "example": 1, "description": "low end of the 80% interval of the customer's purchases "
                                     "in the next 365 days: the model's quantile at the run's "
                                     "calibrated level (models.intervals.calibrated_levels; "
                                     "0.1 when not recalibrated)"})
    purchases_365_p90 = fields.Integer(allow_none=True, metadata={
        "example": 3, "description": "high end of that interval (quantile at the run's calibrated "
                                     "upper level, 0.9 when not recalibrated)"})
    spend_365_p10 = fields.Float(allow_none=True, metadata={
        "example": 40.0, "description": "low end of the 80% interval of spend in the next "
                                        "365 days (undiscounted; same levels; null for runs "
                                        "before intervals)"})
    spend_365_p90 = fields.Float(allow_none=True, metadata={
        "example": 260.0, "description": "high end of the spend interval"})
    churn_probability = fields.Float(allow_none=True, metadata={
        "example": 0.37, "description": "P(no purchase in the next churn_horizon_days)"})
    churn_risk = fields.String(allow_none=True, metadata={"enum": list(CHURN_RISKS)})
    tier = fields.String(allow_none=True, metadata={"enum": list(TIERS)})
    value_segment = fields.String(allow_none=True, metadata={"enum": list(VALUE_SEGMENTS)})
    rfm_recency = fields.Integer(allow_none=True, metadata={"description": "1-5"})
    rfm_frequency = fields.Integer(allow_none=True, metadata={"description": "1-5"})
    rfm_monetary = fields.Integer(allow_none=True, metadata={"description": "1-5"})
    rfm_segment = fields.String(allow_none=True, metadata={"example": "champions"})
    recommended_action = fields.String(allow_none=True, metadata={"example": "vip_care"})


class TierTransitionSchema(Schema):
    """One change of tier, in the run that made it."""

    run_id = fields.Integer()
    as_of = fields.String(metadata={"example": "1998-06-30"})
    from_tier = fields.String(allow_none=True, metadata={"description": "null: first scored"})
    to_tier = fields.String()


class CustomerTierSchema(Schema):
    """A customer's tier for agents and campaign tools (from the live run)."""

    customer_id = fields.String(metadata={"example": "cdnow-0001"})
    tier = fields.String(metadata={"enum": list(TIERS)})
    tier_since = fields.String(allow_none=True, metadata={
        "description": "as_of of the run in which the customer entered this tier"})
    value_segment = fields.String(allow_none=True)
    rfm_segment = fields.String(allow_none=True)
    recommended_action = fields.String(allow_none=True)
    churn_risk = fields.String(allow_none=True)
    churn_probability = fields.Float(allow_none=True)
    clv_12m = fields.Float(allow_none=True)
    p_alive = fields.Float(allow_none=True)
    p_alive_note = fields.String(allow_none=True, metadata={"enum": list(ALIVE_NOTES)})
    run_id = fields.Integer()
    as_of = fields.String()
    recent_transitions = fields.List(fields.Nested(TierTransitionSchema))
    provisional = fields.Boolean(metadata={
        "description": "true when the customer's orders changed after the live run: the "
                       "tier and scores are recomputed now from the run's models and policy"})
    provisional_as_of = fields.String(allow_none=True, metadata={
        "description": "the day a provisional answer is computed as of (null otherwise)"})
    merged_into = fields.String(allow_none=True, metadata={
        "description": "set when the id asked for was merged into another customer: the "
                       "answer is the survivor's (customer_id)"})


class AudienceQuerySchema(Schema):
    """Filters and paging of ``GET /v1/customers``."""

    tier = fields.String(validate=validate.OneOf(TIERS))
    value_segment = fields.String(validate=validate.OneOf(VALUE_SEGMENTS))
    rfm_segment = fields.String(validate=validate.OneOf(RFM_SEGMENTS))
    churn_risk = fields.String(validate=validate.OneOf(CHURN_RISKS))
    min_clv = fields.Float(allow_nan=False)
    max_clv = fields.Float(allow_nan=False)
    min_p_alive = fields.Float(validate=validate.Range(min=0, max=1))
    last_purchase_before = fields.Date()
    last_purchase_after = fields.Date()
    sort = fields.String(load_default="customer_id", validate=validate.OneOf(SORTS), metadata={
        "description": "order of the pages (and the CSV); '-' means descending. Ties are "
                       "broken by customer id. Orders other than customer_id sort the matching "
                       "customers for every page: narrow the filters on a large base."})
    cursor = fields.String(validate=validate.Length(max=2000),
                           metadata={"description": "next_cursor of the previous page"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class AudienceCustomerSchema(Schema):
    """One customer of an audience."""

    customer_id = fields.String()
    tier = fields.String(allow_none=True)
    tier_since = fields.String(allow_none=True)
    value_segment = fields.String(allow_none=True)
    rfm_segment = fields.String(allow_none=True)
    recommended_action = fields.String(allow_none=True)
    churn_probability = fields.Float(allow_none=True)
    churn_risk = fields.String(allow_none=True)
    clv_12m = fields.Float(allow_none=True)
    p_alive = fields.Float(allow_none=True)
    expected_purchases_90 = fields.Float(allow_none=True)
    frequency = fields.Integer()
    last_purchase = fields.String()
    historic_spend = fields.Float()


class AudiencePageSchema(Schema):
    """One page of an audience."""

    run_id = fields.Integer()
    as_of = fields.String()
    sort = fields.String(metadata={"example": "-clv_12m"})
    items = fields.List(fields.Nested(AudienceCustomerSchema))
    next_cursor = fields.String(allow_none=True, metadata={
        "description": "pass as cursor for the next page; null on the last page"})


class CustomerSearchQuerySchema(Schema):
    """Exactly one of: email, phone, or channel with external_id."""

    email = fields.String(validate=validate.Length(min=1, max=254),
                          metadata={"example": "li.wei@example.com"})
    phone = fields.String(validate=validate.Length(min=1, max=40),
                          metadata={"example": "+86 138 0013 8000"})
    channel = fields.String(validate=validate.Length(min=1, max=32), metadata={"example": "jd"})
    external_id = fields.String(validate=validate.Length(min=1, max=128),
                                metadata={"example": "jd_88231"})


class CustomerMatchSchema(Schema):
    """One customer found by a search."""

    customer_id = fields.String(metadata={"example": "C-10023"})
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    tier = fields.String(allow_none=True, metadata={"description": "in the live run"})
    value_segment = fields.String(allow_none=True)
    recommended_action = fields.String(allow_none=True)
    merged_ids = fields.List(fields.String(), allow_none=True, metadata={
        "description": "merged customers (aliases) through which this survivor was found"})


class CustomerSearchSchema(Schema):
    """Matches, by customer id (at most 20)."""

    matches = fields.List(fields.Nested(CustomerMatchSchema))


class ChannelOrdersSchema(Schema):
    """A customer's orders on one channel."""

    channel = fields.String(metadata={"example": "tmall"})
    paid_orders = fields.Integer()
    refunded_orders = fields.Integer()
    cancelled_orders = fields.Integer()
    net_spend = fields.Float(metadata={"description": "sum of paid orders"})
    first_order_at = fields.String(allow_none=True)
    last_order_at = fields.String(allow_none=True)


class ContactSchema(Schema):
    """Personal data: only for keys with customers:read."""

    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    name = fields.String(allow_none=True)


class RecentOrderSchema(Schema):
    """One order of a customer."""

    channel = fields.String(metadata={"example": "tmall"})
    order_id = fields.String(metadata={"example": "TM20240501-0001"})
    ordered_at = fields.String()
    amount = fields.Float()
    status = fields.String(metadata={"enum": list(ORDER_STATUSES)})


class AliasSchema(Schema):
    """A customer merged into another."""

    customer_id = fields.String(metadata={"example": "C-20911"})
    merge_id = fields.String(metadata={"example": "17"})


class CustomerProfileSchema(Schema):
    """Everything an agent or tool needs about one customer, in one read."""

    customer_id = fields.String(metadata={"example": "C-10023"})
    created_at = fields.String()
    updated_at = fields.String()
    contact = fields.Nested(ContactSchema, allow_none=True, metadata={
        "description": "null unless the key has customers:read"})
    identities = fields.List(fields.Nested(IdentitySchema), allow_none=True, metadata={
        "description": "channel accounts; null unless the key has customers:read"})
    orders_by_channel = fields.List(fields.Nested(ChannelOrdersSchema))
    run_id = fields.Integer(allow_none=True)
    as_of = fields.String(allow_none=True)
    scored_at = fields.String(allow_none=True)
    churn_horizon_days = fields.Integer(allow_none=True)
    provisional = fields.Boolean()
    tier = fields.String(allow_none=True)
    tier_since = fields.String(allow_none=True)
    value_segment = fields.String(allow_none=True)
    rfm_segment = fields.String(allow_none=True)
    recommended_action = fields.String(allow_none=True)
    scores = fields.Dict(allow_none=True, metadata={
        "description": "every score of the live run (as in /scores), or recomputed when "
                       "provisional; null when the customer has no paid order"})
    recent_transitions = fields.List(fields.Nested(TierTransitionSchema))
    recent_orders = fields.List(fields.Nested(RecentOrderSchema), metadata={
        "description": "the latest 10 orders, newest first, every status"})
    aliases = fields.List(fields.Nested(AliasSchema), metadata={
        "description": "customers merged into this one; their ids answer as this customer"})
    merged_into = fields.String(allow_none=True, metadata={
        "description": "set when the id asked for was merged: this is the survivor's profile"})
