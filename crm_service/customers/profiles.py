"""One customer as agents and campaign tools see them: tier, profile, search, provisional tiers.

Reads only. Each lookup is one SQL statement, so scores, tier history and the live run always
come from the same snapshot, and a lookup is one round trip.

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
from crm_service.storage.score_reads import SCORE_COLUMNS
from models.clv import customer_lifetime_value
from models.gamma_gamma import GammaGammaModel
from models.purchase import purchase_model
from models.segments import TierPolicy, classify_one

if TYPE_CHECKING:
    import psycopg

MAX_SEARCH_RESULTS = 20
HISTORY = 5  # tier transitions shown

# Pieces of both kinds of lookup below, for the customer ``{c}`` in the live run ``r``. Lists are
# array_to_json(array_agg(...)): compact, where json_agg would put line breaks between elements.
# Stale: an order of the customer changed after the run started, or falls after its as_of.
_STALE = """EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = {c}
               AND (o.updated_at > r.started_at
                    OR (o.status = 'paid'
                        AND o.ordered_at >= (r.as_of + 1)::timestamp AT TIME ZONE r.timezone)))"""
_TRANSITIONS = """(SELECT coalesce(array_to_json(array_agg(h ORDER BY h.run_id DESC)), '[]') FROM (
            SELECT t.run_id, sr.as_of, t.from_tier, t.to_tier FROM tier_transitions t
            JOIN scoring_runs sr ON sr.id = t.run_id
            WHERE t.customer_id = {c} AND t.run_id <= r.id
            ORDER BY t.run_id DESC LIMIT %(n)s) h)"""
_IDENTITIES = """(SELECT coalesce(array_to_json(array_agg(
            idn ORDER BY idn.channel, idn.external_id)), '[]') FROM (
            SELECT i.channel, i.external_id FROM customer_identities i
            WHERE i.customer_id = {c}) idn)"""
_CHANNELS = """(SELECT coalesce(array_to_json(array_agg(ch ORDER BY ch.channel)), '[]') FROM (
            SELECT o.channel,
                   count(*) FILTER (WHERE o.status = 'paid')      AS paid_orders,
                   count(*) FILTER (WHERE o.status = 'refunded')  AS refunded_orders,
                   count(*) FILTER (WHERE o.status = 'cancelled') AS cancelled_orders,
                   coalesce(sum(o.amount) FILTER (WHERE o.status = 'paid'), 0)::float8
                       AS net_spend,
                   min(o.ordered_at) FILTER (WHERE o.status = 'paid') AS first_order_at,
                   max(o.ordered_at) FILTER (WHERE o.status = 'paid') AS last_order_at
            FROM orders o WHERE o.customer_id = {c} GROUP BY o.channel) ch)"""

# One customer: the live run, their row in it, their latest tier changes, and whether the row
# is stale.
_LOOKUP = """
SELECT r.id, r.as_of, r.finished_at, r.churn_horizon_days, s.customer_id IS NOT NULL,
       {{cols}}, {transitions}, {stale} {{extra}}
FROM scoring_runs r
LEFT JOIN customer_scores s ON s.run_id = r.id AND s.customer_id = %(c)s
WHERE r.id = (SELECT active_run_id FROM scoring_state)
""".format(transitions=_TRANSITIONS.format(c="%(c)s"), stale=_STALE.format(c="%(c)s"))

# With the profile: the customer row, identities and the order summary per channel.
_PROFILE_EXTRA = """,
       (SELECT json_build_object('email', c.email, 'phone', c.phone, 'name', c.name,
                                 'created_at', c.created_at, 'updated_at', c.updated_at)
        FROM customers c WHERE c.customer_id = %(c)s),
       {identities}, {channels}
""".format(identities=_IDENTITIES.format(c="%(c)s"), channels=_CHANNELS.format(c="%(c)s"))

# The answers of GET /v1/customers/{id}/tier and GET /v1/customers/{id}, built as JSON text by
# PostgreSQL, for many customers in one round trip (see cards()). Only customers whose live-run
# row is current and complete: scored with a tier, finite numbers (PostgreSQL would write NaN as
# a string), and not stale (those get a provisional answer from lookup()).
_CARD_FROM = """
FROM unnest(%(ids)s::text[]) AS c(id)
JOIN scoring_runs r ON r.id = (SELECT active_run_id FROM scoring_state)
JOIN customer_scores s ON s.run_id = r.id AND s.customer_id = c.id
{{join}}
WHERE s.tier IS NOT NULL AND s.p_alive < 'Infinity'
  AND (s.clv_12m IS NULL OR s.clv_12m < 'Infinity')
  AND (s.churn_probability IS NULL OR s.churn_probability < 'Infinity')
  AND (s.expected_spend IS NULL OR s.expected_spend < 'Infinity')
  AND NOT {stale}
""".format(stale=_STALE.format(c="c.id"))

_TIER_CARDS = """
SELECT c.id, (SELECT row_to_json(card) FROM (
           SELECT c.id AS customer_id, r.id AS run_id, r.as_of, false AS provisional,
                  NULL::date AS provisional_as_of, s.tier, s.tier_since, s.value_segment,
                  s.rfm_segment, s.recommended_action, s.churn_risk, s.churn_probability,
                  s.clv_12m, s.p_alive, {transitions} AS recent_transitions) card)::text
""".format(transitions=_TRANSITIONS.format(c="c.id")) + _CARD_FROM.format(join="")

# Timestamps as Python's isoformat() writes them (the Flask view's format): sessions are UTC.
_ISO_UTC = ("to_char({t} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
            " || CASE WHEN date_part('microseconds', {t})::int %% 1000000 = 0 THEN ''"
            " ELSE to_char({t} AT TIME ZONE 'UTC', '.US') END || '+00:00'")

_PROFILE_CARDS = """
SELECT c.id, (SELECT row_to_json(card) FROM (
           SELECT c.id AS customer_id, cu.created_at, cu.updated_at,
                  CASE WHEN %(pii)s THEN (SELECT row_to_json(ct) FROM (
                      SELECT cu.email, cu.phone, cu.name) ct) END AS contact,
                  CASE WHEN %(pii)s THEN {identities} END AS identities,
                  {channels} AS orders_by_channel,
                  r.id AS run_id, r.as_of, {scored_at} AS scored_at, r.churn_horizon_days,
                  false AS provisional, s.tier, s.tier_since, s.value_segment, s.rfm_segment,
                  s.recommended_action,
                  (SELECT row_to_json(sc) FROM (SELECT {{scores}}) sc) AS scores,
                  {transitions} AS recent_transitions) card)::text
""".format(identities=_IDENTITIES.format(c="c.id"), channels=_CHANNELS.format(c="c.id"),
           scored_at=_ISO_UTC.format(t="r.finished_at"),
           transitions=_TRANSITIONS.format(c="c.id")) + _CARD_FROM.format(
    join="JOIN customers cu ON cu.customer_id = c.id")

# Without a live run the profile still answers (scores null).
_PROFILE_ONLY = "SELECT NULL, NULL, NULL, NULL, false, {nulls}, '[]'::json, false {extra}"

_OCCASIONS = """
SELECT (ordered_at AT TIME ZONE %(tz)s)::date AS day, sum(amount)::float8
FROM orders WHERE customer_id = %(c)s AND status = 'paid'
GROUP BY day ORDER BY day
"""

_SCORES = tuple(c for c in SCORE_COLUMNS if c != "customer_id")
# numeric columns as float8, as the Flask view's jsonable() gives them
_PROFILE_CARDS = _PROFILE_CARDS.format(scores=", ".join(
    f"s.{c}::float8 AS {c}" if c in ("monetary_value", "historic_spend") else f"s.{c}"
    for c in _SCORES))
_TIER_FIELDS = ("tier", "tier_since", "value_segment", "rfm_segment", "recommended_action")


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


_contexts: dict[int, _RunContext] = {}
_contexts_lock = threading.Lock()


def _run_context(conn: psycopg.Connection, run_id: int) -> _RunContext:
    """The run's models and policy, read once per process and run (a run never changes)."""
    with _contexts_lock:
        found = _contexts.get(run_id)
    if found is not None:
        return found
    row = conn.execute(
        "SELECT r.models, r.counts -> 'cutoffs', r.timezone, r.churn_horizon_days, p.policy"
        " FROM scoring_runs r LEFT JOIN tier_policies p ON p.version = r.tier_policy_version"
        " WHERE r.id = %s", (run_id,)).fetchone()
    if row is None:
        raise LookupError(f"scoring run {run_id} does not exist")
    models, cutoffs, tz, horizon, policy = row
    thresholds = (models.get("churn") or {}).get("risk_thresholds") or {}
    context = _RunContext(
        model=purchase_model(models["selected"], models[models["selected"]]["params"]),
        spend=GammaGammaModel.from_params(models["gamma_gamma"]["params"]),
        policy=TierPolicy.from_dict(policy) if policy else TierPolicy(),
        cutoffs=cutoffs, timezone=tz, horizon=int(horizon),
        risk=(float(thresholds.get("medium", 0.5)), float(thresholds.get("high", 0.8))))
    with _contexts_lock:
        if len(_contexts) >= 8:
            _contexts.clear()
        _contexts[run_id] = context
    return context


def _provisional(conn: psycopg.Connection, customer_id: str, run_id: int, as_of: date,
                 scored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Scores and tier recomputed from the customer's orders now; None if they have none."""
    ctx = _run_context(conn, run_id)
    days = conn.execute(_OCCASIONS, {"tz": ctx.timezone, "c": customer_id}).fetchall()
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
    out: dict[str, Any] = {
        "frequency": x, "recency_days": t_x, "t_days": big_t, "monetary_value": monetary,
        "historic_spend": spend_total, "first_purchase": first, "last_purchase": last,
        "avg_days_between_orders": t_x / x if x else None, "p_alive": p_alive,
        "expected_purchases_30": expected[30], "expected_purchases_90": expected[90],
        "expected_purchases_365": expected[365], "expected_next_order": next_order,
        "expected_spend": spend, "clv_12m": clv, "churn_probability": churn,
        "churn_risk": "high" if churn >= high else "medium" if churn >= medium else "low",
        "churn_model": "btyd_baseline",
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
    ``recent_transitions`` and, with ``profile``, ``customer``, ``identities`` and
    ``orders_by_channel``.
    """
    cols = ", ".join(f"s.{c}" for c in _SCORES)
    extra = _PROFILE_EXTRA if profile else ""
    params = {"c": customer_id, "n": HISTORY}
    row = conn.execute(_LOOKUP.format(cols=cols, extra=extra), params).fetchone()
    if row is None:
        if not profile:
            return None
        nulls = ", ".join("NULL" for _ in _SCORES)
        row = conn.execute(_PROFILE_ONLY.format(nulls=nulls, extra=extra), params).fetchone()
        assert row is not None  # a SELECT without FROM has one row
    run_id, as_of, scored_at, horizon, has_scores = row[:5]
    n = len(_SCORES)
    scores = dict(zip(_SCORES, row[5:5 + n], strict=True)) if has_scores else None
    transitions, stale = row[5 + n], row[6 + n]
    out: dict[str, Any] = {
        "run": None if run_id is None else {"run_id": run_id, "as_of": as_of,
                                            "scored_at": scored_at,
                                            "churn_horizon_days": horizon},
        "scores": scores, "provisional": False, "recent_transitions": transitions,
    }
    if profile:
        customer, identities, channels = row[7 + n:]
        if customer is None:
            return None
        out.update(customer=customer, identities=identities, orders_by_channel=channels)
    if stale and run_id is not None:
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
    sql = _PROFILE_CARDS if profile else _TIER_CARDS
    rows = conn.execute(sql, {"ids": customer_ids, "n": HISTORY, "pii": contact}).fetchall()
    return {customer_id: card.encode() for customer_id, card in rows}


def search(conn: psycopg.Connection, *, email: str | None = None, phone: str | None = None,
           channel: str | None = None, external_id: str | None = None,
           country_code: str | None = None) -> list[dict[str, Any]]:
    """Customers matching one contact or channel identity exactly, after normalisation.

    Exactly one of ``email``, ``phone`` or ``channel`` with ``external_id``. Each match has
    the id, contact fields and the live tier (None when not scored), at most
    :data:`MAX_SEARCH_RESULTS`, by customer id. A phone matches in the forms of
    :func:`phone_forms` (with ``country_code``, a national number finds its international form).
    """
    given = [name for name, v in (("email", email), ("phone", phone), ("channel", channel),
                                  ("external_id", external_id)) if v is not None]
    if given == ["email"]:
        norm = normalize_email(email or "")
        if norm is None:
            raise ValidationError("email: not an email address")
        where, value = "c.email_normalized = %(v)s", norm
        return _search(conn, where, {"v": value})
    if given == ["phone"]:
        norm = normalize_phone(phone or "")
        if norm is None:
            raise ValidationError("phone: not a phone number (5-15 digits, optional leading +)")
        return _search(conn, "c.phone_normalized = ANY(%(v)s)",
                       {"v": phone_forms(norm, country_code)})
    if given == ["channel", "external_id"]:
        chan, ext = (channel or "").strip().lower(), (external_id or "").strip()
        if not chan or not ext:
            raise ValidationError("channel and external_id must not be empty")
        where = ("c.customer_id IN (SELECT customer_id FROM customer_identities"
                 " WHERE channel = %(ch)s AND external_id = %(v)s)")
        return _search(conn, where, {"v": ext, "ch": chan})
    raise ValidationError("search by exactly one of: email, phone, or channel with external_id")


def phone_forms(normalized: str, country_code: str | None) -> list[str]:
    """The stored forms a typed phone number may have (``normalize_phone`` output).

    An international number (``+86...``) is itself. A national one (``138 0013 8000``) is also
    tried in international form with the deployment's country code (``CRM_PHONE_COUNTRY_CODE``,
    dropping a trunk ``0``), and digits that start with that code (``86138...``) with a ``+``.
    Without a country code a national number matches only as typed.
    """
    if normalized.startswith("+"):
        return [normalized]
    forms = [normalized]
    if country_code:
        forms.append(f"+{country_code}{normalized.lstrip('0')}")
        if normalized.startswith(country_code) and len(normalized) - len(country_code) >= 7:
            forms.append("+" + normalized)
    return forms


def find(conn: psycopg.Connection, text: str, *, country_code: str | None = None,
         limit: int = MAX_SEARCH_RESULTS) -> list[dict[str, Any]]:
    """Customers matching what an agent typed into one search box, however it was meant.

    ``text`` is tried, in one statement, as a customer id, an email, a phone number, a channel
    account written ``channel/external_id``, and an external id on any channel (each only where
    it could be one: ``+86 138-0013-8000`` is tried as a phone, not as an email). Each match
    lists how it matched in ``matched_by``; at most ``limit``, by customer id. Phones are
    matched in the forms of :func:`phone_forms`.
    """
    text = text.strip()
    if not text or len(text) > 254 or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return []
    arms = ["SELECT customer_id, 'customer_id' AS how FROM customers WHERE customer_id = %(q)s",
            "SELECT customer_id, 'external_id' FROM customer_identities WHERE external_id = %(q)s"]
    params: dict[str, Any] = {"q": text}
    if (email := normalize_email(text)) is not None:
        arms.append("SELECT customer_id, 'email' FROM customers WHERE email_normalized = %(e)s")
        params["e"] = email
    if (phone := normalize_phone(text)) is not None:
        arms.append("SELECT customer_id, 'phone' FROM customers"
                    " WHERE phone_normalized = ANY(%(p)s)")
        params["p"] = phone_forms(phone, country_code)
    channel, slash, external = text.partition("/")
    if slash and channel.strip() and external.strip():
        arms.append("SELECT customer_id, 'channel_identity' FROM customer_identities"
                    " WHERE channel = %(ch)s AND external_id = %(x)s")
        params.update(ch=channel.strip().lower(), x=external.strip())
    rows = conn.execute(
        "WITH hits AS (" + " UNION ALL ".join(f"({arm} LIMIT %(n)s)" for arm in arms) + "),"
        " found AS (SELECT customer_id, array_agg(DISTINCT how ORDER BY how) AS how"
        "           FROM hits GROUP BY customer_id ORDER BY customer_id LIMIT %(n)s)"
        " SELECT c.customer_id, c.email, c.phone, c.name, s.tier, s.value_segment,"
        " s.recommended_action, f.how FROM found f JOIN customers c USING (customer_id)"
        " LEFT JOIN scoring_state st ON true"
        " LEFT JOIN customer_scores s ON s.run_id = st.active_run_id"
        "  AND s.customer_id = c.customer_id ORDER BY c.customer_id",
        {**params, "n": limit}).fetchall()
    keys = ("customer_id", "email", "phone", "name", "tier", "value_segment",
            "recommended_action", "matched_by")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _search(conn: psycopg.Connection, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT c.customer_id, c.email, c.phone, c.name, s.tier, s.value_segment,"
        " s.recommended_action FROM customers c"
        " LEFT JOIN scoring_state st ON true"
        " LEFT JOIN customer_scores s ON s.run_id = st.active_run_id"
        f" AND s.customer_id = c.customer_id WHERE {where}"
        " ORDER BY c.customer_id LIMIT %(n)s", {**params, "n": MAX_SEARCH_RESULTS}).fetchall()
    keys = ("customer_id", "email", "phone", "name", "tier", "value_segment",
            "recommended_action")
    return [dict(zip(keys, r, strict=True)) for r in rows]
