"""One customer as agents and campaign tools see them: tier, profile, search, provisional tiers.

Reads only, through :mod:`crm_service.storage.lookups` (one statement per lookup, so scores,
tier history and the live run always come from the same snapshot).

**Provisional tiers.** A run scores customers as of its ``as_of``. A customer whose orders
arrived after the run started (a new customer, a dormant one who bought again, a refund) would
otherwise be shown a stale tier, or none, until the next run. For them the lookup recomputes
frequency, recency and T from their orders, as of the later of the run's ``as_of`` and their
last purchase day, and applies the live run's fitted models (closed form: microseconds) and
tier policy, with the run's rank boundaries (:func:`models.segments.run_cutoffs`). The answer
is flagged ``provisional: true``. The churn probability of a provisional answer is the BTYD
P(no purchase in H) of the run's purchase model: the ML model needs the whole base's features.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from crm_service.audiences.audience import jsonable
from crm_service.customers.rules import normalize_email, normalize_phone
from crm_service.errors import ValidationError
from crm_service.storage import lookups as store
from models import forecast
from models.clv import customer_lifetime_value
from models.gamma_gamma import GammaGammaModel
from models.purchase import purchase_model
from models.segments import ALIVE_NOTES, TierPolicy, alive_notes, classify_one

if TYPE_CHECKING:
    import psycopg

MAX_SEARCH_RESULTS = 20
HISTORY = store.HISTORY  # tier transitions shown


@dataclass(frozen=True)
class _RunContext:
    """What a provisional answer needs from a run: its models, policy and boundaries."""

    model: Any
    spend: GammaGammaModel
    policy: TierPolicy
    cutoffs: dict[str, Any] | None
    timezone: str
    horizon: int
    risk: tuple[float, float]
    levels: tuple[float, ...]  # the run's interval levels (recalibrated on its backtest)


_contexts: dict[int, _RunContext] = {}
_contexts_lock = threading.Lock()


def _run_context(conn: psycopg.Connection, run_id: int) -> _RunContext:
    """The run's models and policy, read once per process and run (a run never changes)."""
    with _contexts_lock:
        found = _contexts.get(run_id)
    if found is not None:
        return found
    run = store.run_models(conn, run_id)
    if run is None:
        raise LookupError(f"scoring run {run_id} does not exist")
    models, cutoffs, tz, horizon, policy = (run.models, run.cutoffs, run.timezone,
                                            run.churn_horizon_days, run.policy)
    thresholds = (models.get("churn") or {}).get("risk_thresholds") or {}
    context = _RunContext(
        model=purchase_model(models["selected"], models[models["selected"]]["params"]),
        spend=GammaGammaModel.from_params(models["gamma_gamma"]["params"]),
        policy=TierPolicy.from_dict(policy) if policy else TierPolicy(),
        cutoffs=cutoffs, timezone=tz, horizon=int(horizon),
        risk=(float(thresholds.get("medium", 0.5)), float(thresholds.get("high", 0.8))),
        levels=forecast.stored_levels(models.get("intervals")))
    with _contexts_lock:
        if len(_contexts) >= 8:
            _contexts.clear()
        _contexts[run_id] = context
    return context


def _provisional(conn: psycopg.Connection, customer_id: str, run_id: int, as_of: date,
                 scored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Scores and tier recomputed from the customer's orders now; None if they have none."""
    ctx = _run_context(conn, run_id)
    days = store.occasion_days(conn, customer_id, ctx.timezone)
    if not days:
        return None
    first, last = days[0][0], days[-1][0]
    at = max(as_of, last)
    x, t_x, big_t = len(days) - 1, (last - first).days, (at - first).days
    amounts = [a for _, a in days]
    spend_total = round(sum(amounts), 2)
    monetary = round(sum(amounts[1:]) / x, 2) if x else 0.0
    fx, ftx, ft = (np.array([v], dtype=float) for v in (x, t_x, big_t))
    model = ctx.model
    p_alive = float(model.probability_alive(fx, ftx, ft)[0])
    expected = {h: float(model.conditional_expected_purchases(h, fx, ftx, ft)[0])
                for h in (30, 90, 365)}
    spend = float(ctx.spend.conditional_expected_spend(fx, np.array([monetary]))[0])
    clv = float(customer_lifetime_value(model, fx, ftx, ft, np.array([spend]))[0])
    churn = float(model.probability_no_purchases(ctx.horizon, fx, ftx, ft)[0])
    wait = float(model.median_time_to_next_purchase(fx, ftx, ft)[0])
    next_order = (at + timedelta(days=int(np.ceil(wait)))) \
        if p_alive >= 0.5 and wait < 3650 else None
    medium, high = ctx.risk
    p, q, gamma = (ctx.spend.params_[k] for k in ("p", "q", "v"))
    bounds, factors = forecast.intervals(model, 365, fx, ftx, ft, p, q, ctx.levels)
    low, top = (int(v) for v in bounds[0])
    factor = factors[0] * (gamma + x * monetary)
    note = int(alive_notes(np.array([p_alive]), fx, np.array([churn]), high_risk=high,
                           one_time_buyers_assumed_alive=type(
                               model).one_time_buyers_assumed_alive)[0])
    out: dict[str, Any] = {
        "frequency": x, "recency_days": t_x, "t_days": big_t, "monetary_value": monetary,
        "historic_spend": spend_total, "first_purchase": first, "last_purchase": last,
        "avg_days_between_orders": t_x / x if x else None, "p_alive": p_alive,
        "expected_purchases_30": expected[30], "expected_purchases_90": expected[90],
        "expected_purchases_365": expected[365], "expected_next_order": next_order,
        "expected_spend": spend, "clv_12m": clv, "churn_probability": churn,
        "churn_risk": "high" if churn >= high else "medium" if churn >= medium else "low",
        "churn_model": "btyd_baseline",
        "purchases_365_p10": low, "purchases_365_p90": top,
        "spend_365_p10": float(factor[0]), "spend_365_p90": float(factor[1]),
        "p_alive_note": ALIVE_NOTES[note] if note >= 0 else None,
    }
    if ctx.cutoffs:
        was_high = scored is not None and scored.get("tier") == "high_value"
        out.update(classify_one(
            ctx.policy, ctx.cutoffs, days_since_first=big_t, days_since_last=(at - last).days,
            occasions=x + 1, spend=spend_total, clv=clv, churn=churn,
            high_churn_risk=churn >= high, was_high_value=was_high))
    else:  # a run from before cut-offs were recorded: no tier without a re-run
        out.update(dict.fromkeys(("tier", "value_segment", "rfm_recency", "rfm_frequency",
                                  "rfm_monetary", "rfm_segment", "recommended_action")))
    if scored is not None and scored.get("tier") == out["tier"]:
        out["tier_since"] = scored["tier_since"]
    else:
        out["tier_since"] = first if out["tier"] == "new" else last
    out["provisional_as_of"] = at
    return out


def lookup(conn: psycopg.Connection, customer_id: str, *,
           profile: bool = False) -> dict[str, Any] | None:
    """A customer's live scores and tier, provisional when their orders changed since the run.

    Returns None when no run is live (and ``profile`` is false) or, with ``profile``, when the
    customer does not exist. The result has ``run`` (id, as_of, scored_at, churn horizon, or
    None), ``scores`` (all score columns, or None when the customer has none), ``provisional``,
    ``recent_transitions``, ``customer_id`` and ``merged_into`` (an alias is answered by its
    survivor: ``customer_id`` is then the survivor's, ``merged_into`` too; else None) and,
    with ``profile``, ``customer``, ``identities``, ``orders_by_channel``, ``recent_orders``
    and ``aliases``.
    """
    merged_into = store.survivor(conn, customer_id)
    if merged_into is not None:
        customer_id = merged_into
    found = store.live_lookup(conn, customer_id, profile=profile)
    if found is None or (profile and found.customer is None):
        return None
    run_id, as_of, scores = found.run_id, found.as_of, found.scores
    out: dict[str, Any] = {
        "run": None if run_id is None else {"run_id": run_id, "as_of": as_of,
                                            "scored_at": found.scored_at,
                                            "churn_horizon_days": found.churn_horizon_days},
        "scores": scores, "provisional": False, "recent_transitions": found.transitions,
        "customer_id": customer_id, "merged_into": merged_into,
    }
    if profile:
        out.update(customer=found.customer, identities=found.identities,
                   orders_by_channel=found.orders_by_channel,
                   recent_orders=found.recent_orders, aliases=found.aliases)
    if found.stale and run_id is not None and as_of is not None:
        # None when every paid order was refunded or cancelled since the run.
        out["scores"] = _provisional(conn, customer_id, run_id, as_of, scores)
        out["provisional"] = True
    if out["scores"] is not None:
        out["scores"] = jsonable(out["scores"])
    return out


def cards(conn: psycopg.Connection, customer_ids: list[str], *, profile: bool = False,
          contact: bool = False) -> dict[str, bytes]:
    """The ``/tier`` (or, with ``profile``, the profile) answers of ``customer_ids``, as JSON.

    One statement for all of them (one snapshot, one round trip): the API's fast lane asks for
    the lookups that arrived together in one call. ``contact`` includes the profile's contact
    details and channel accounts (a key with ``customers:read``); without it they are null.
    A customer left out has no live answer that PostgreSQL can give on its own: unknown, not
    scored in the live run, no run live, or orders changed since the run (provisional);
    :func:`lookup` answers those.
    """
    if not customer_ids:
        return {}
    return store.card_json(conn, customer_ids, profile=profile, contact=contact)


def search(conn: psycopg.Connection, *, email: str | None = None, phone: str | None = None,
           channel: str | None = None, external_id: str | None = None,
           country_code: str | None = None) -> list[dict[str, Any]]:
    """Customers matching one contact or channel identity exactly, after normalisation.

    Exactly one of ``email``, ``phone`` or ``channel`` with ``external_id``. Each match has
    the id, contact fields and the live tier (None when not scored), at most
    :data:`MAX_SEARCH_RESULTS`, by customer id. Phones are compared in E.164
    (:func:`crm_service.customers.rules.normalize_phone`, national numbers read with
    ``country_code``), so every written form of a number finds every other. A merged customer
    (an alias) is found as its survivor, with ``merged_ids`` naming the aliases that matched.
    """
    given = [name for name, v in (("email", email), ("phone", phone), ("channel", channel),
                                  ("external_id", external_id)) if v is not None]
    if given == ["email"]:
        norm = normalize_email(email or "")
        if norm is None:
            raise ValidationError("email: not an email address")
        return _search(conn, "email", norm)
    if given == ["phone"]:
        norm = normalize_phone(phone or "", country_code)
        if norm is None:
            raise ValidationError("phone: not a phone number (5-15 digits, optional leading +)")
        return _search(conn, "phones", [norm])
    if given == ["channel", "external_id"]:
        chan, ext = (channel or "").strip().lower(), (external_id or "").strip()
        if not chan or not ext:
            raise ValidationError("channel and external_id must not be empty")
        return _search(conn, "identity", ext, channel=chan)
    raise ValidationError("search by exactly one of: email, phone, or channel with external_id")


def find(conn: psycopg.Connection, text: str, *, country_code: str | None = None,
         limit: int = MAX_SEARCH_RESULTS) -> list[dict[str, Any]]:
    """Customers matching what an agent typed into one search box, however it was meant.

    ``text`` is tried, in one statement, as a customer id, an email, a phone number, a channel
    account written ``channel/external_id``, and an external id on any channel (each only where
    it could be one: ``+86 138-0013-8000`` is tried as a phone, not as an email). Each match
    lists how it matched in ``matched_by``; at most ``limit``, by customer id. Phones are
    matched in E.164 (as :func:`search`). Also tried as an order id (``order_id``, or
    ``channel/order_id``): the order's customer. Aliases are answered by their survivor.
    """
    text = text.strip()
    if not text or len(text) > 254 or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return []
    email = normalize_email(text)
    phone = normalize_phone(text, country_code)
    channel, slash, external = text.partition("/")
    identity = (channel.strip().lower(), external.strip()) \
        if slash and channel.strip() and external.strip() else None
    found = store.find_matches(
        conn, text, email=email,
        phones=[phone] if phone is not None else None,
        identity=identity, limit=limit)
    return [m.__dict__ for m in found]


def _search(conn: psycopg.Connection, by: str, value: Any, *,
            channel: str | None = None) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.__dict__.items() if k != "matched_by"}
            for m in store.matches(conn, by, value, MAX_SEARCH_RESULTS, channel=channel)]
