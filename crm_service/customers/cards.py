"""The two answers agents and tools ask for most, defined once: the tier card and the profile.

``GET /v1/customers/{id}/tier`` and ``GET /v1/customers/{id}`` are built three ways, each for a
reason: PostgreSQL writes the JSON itself for customers whose live-run row is current (the
lookup lane, :func:`crm_service.storage.lookups.card_json`, many customers a round trip); the
Flask views build it from :func:`crm_service.customers.profiles.lookup` (errors, and customers
whose orders changed since the run: the provisional answer recomputed in Python). This module
is the one definition of what those answers hold: their fields, in order, with each field's
JSON kind, whether it may be null and, for words of the vocabulary, which words.

- the SQL card's select list is written from :data:`TIER_CARD` and :data:`PROFILE_CARD`
  (a field without an SQL expression fails at import);
- the Flask tier view takes its keys from :data:`TIER_CARD`;
- ``tests/test_cards.py`` checks the marshmallow schemas (the OpenAPI document) against both
  cards, and checks real answers of every path (SQL card, Flask view, provisional answer)
  with :func:`problems`.

Imports only the vocabulary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from crm_service.vocabulary import (
    ALIVE_NOTES,
    CHURN_RISKS,
    ORDER_STATUSES,
    RFM_SEGMENTS,
    TIERS,
    VALUE_SEGMENTS,
)

# JSON kinds: what a field's value is in the answer's JSON.
STRING, DATE, TIMESTAMP, INTEGER, NUMBER, BOOLEAN, OBJECT, LIST = (
    "string", "date", "timestamp", "integer", "number", "boolean", "object", "list")


@dataclass(frozen=True)
class Field:
    """One field of an answer."""

    name: str
    kind: str
    nullable: bool = False
    words: tuple[str, ...] | None = None  # the vocabulary a string field is drawn from
    fields: tuple[Field, ...] | None = None  # an object's fields, or a list's items' fields
    open: bool = False  # an object whose keys are not fixed here (``scores``: every score)


TRANSITION = (
    Field("run_id", INTEGER), Field("as_of", DATE),
    Field("from_tier", STRING, nullable=True, words=TIERS), Field("to_tier", STRING, words=TIERS),
)

_SEGMENTS = (
    Field("tier", STRING, words=TIERS),
    Field("tier_since", DATE, nullable=True),
    Field("value_segment", STRING, nullable=True, words=VALUE_SEGMENTS),
    Field("rfm_segment", STRING, nullable=True, words=RFM_SEGMENTS),
    # The policy names its actions (crm_service.vocabulary.ACTIONS are the defaults).
    Field("recommended_action", STRING, nullable=True),
)

TIER_CARD: tuple[Field, ...] = (
    Field("customer_id", STRING),
    Field("run_id", INTEGER),
    Field("as_of", DATE),
    Field("provisional", BOOLEAN),
    Field("provisional_as_of", DATE, nullable=True),
    *_SEGMENTS,
    Field("churn_risk", STRING, nullable=True, words=CHURN_RISKS),
    Field("churn_probability", NUMBER, nullable=True),
    Field("clv_12m", NUMBER, nullable=True),
    Field("p_alive", NUMBER, nullable=True),
    # Why P(alive) and the churn band may look contradictory (models.segments.alive_notes).
    Field("p_alive_note", STRING, nullable=True, words=ALIVE_NOTES),
    Field("recent_transitions", LIST, fields=TRANSITION),
    # Set when the id asked for was merged: the answer is the survivor's (``customer_id``).
    Field("merged_into", STRING, nullable=True),
)

CONTACT = (Field("email", STRING, nullable=True), Field("phone", STRING, nullable=True),
           Field("name", STRING, nullable=True))
IDENTITY = (Field("channel", STRING), Field("external_id", STRING))
CHANNEL_ORDERS = (
    Field("channel", STRING), Field("paid_orders", INTEGER), Field("refunded_orders", INTEGER),
    Field("cancelled_orders", INTEGER), Field("net_spend", NUMBER),
    Field("first_order_at", TIMESTAMP, nullable=True),
    Field("last_order_at", TIMESTAMP, nullable=True),
)

ALIAS = (Field("customer_id", STRING), Field("merge_id", STRING))
ORDER = (Field("channel", STRING), Field("order_id", STRING), Field("ordered_at", TIMESTAMP),
         Field("amount", NUMBER), Field("status", STRING, words=ORDER_STATUSES))
RECENT_ORDERS = 10  # the latest orders a profile lists

PROFILE_CARD: tuple[Field, ...] = (
    Field("customer_id", STRING),
    Field("created_at", TIMESTAMP),
    Field("updated_at", TIMESTAMP),
    Field("contact", OBJECT, nullable=True, fields=CONTACT),
    Field("identities", LIST, nullable=True, fields=IDENTITY),
    Field("orders_by_channel", LIST, fields=CHANNEL_ORDERS),
    Field("run_id", INTEGER, nullable=True),
    Field("as_of", DATE, nullable=True),
    Field("scored_at", TIMESTAMP, nullable=True),
    Field("churn_horizon_days", INTEGER, nullable=True),
    Field("provisional", BOOLEAN),
    *(Field(f.name, f.kind, nullable=True, words=f.words) for f in _SEGMENTS),
    Field("scores", OBJECT, nullable=True, open=True),
    Field("recent_transitions", LIST, fields=TRANSITION),
    Field("recent_orders", LIST, fields=ORDER),
    Field("aliases", LIST, fields=ALIAS),
    Field("merged_into", STRING, nullable=True),
)


def names(card: tuple[Field, ...]) -> tuple[str, ...]:
    """The card's field names, in order."""
    return tuple(f.name for f in card)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == STRING:
        return isinstance(value, str)
    if kind == DATE:
        return isinstance(value, str) and bool(_DATE.match(value))
    if kind == TIMESTAMP:
        return isinstance(value, str) and bool(_TIMESTAMP.match(value))
    if kind == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    if kind == OBJECT:
        return isinstance(value, dict)
    if kind == LIST:
        return isinstance(value, list)
    raise ValueError(f"unknown kind {kind!r}")


def problems(card: tuple[Field, ...], value: Any, where: str = "") -> list[str]:
    """What in ``value`` (a decoded JSON answer) does not match ``card``; empty when it does."""
    if not isinstance(value, dict):
        return [f"{where or 'answer'}: not an object"]
    found: list[str] = []
    expected = names(card)
    if set(value) != set(expected):
        found.append(f"{where or 'answer'}: keys {sorted(set(value) ^ set(expected))} differ")
    for f in card:
        if f.name not in value:
            continue
        v, at = value[f.name], f"{where}{f.name}"
        if v is None:
            if not f.nullable:
                found.append(f"{at}: null")
            continue
        if not _kind_ok(f.kind, v):
            found.append(f"{at}: {v!r} is not a {f.kind}")
        elif f.words is not None and v not in f.words:
            found.append(f"{at}: {v!r} is not one of {list(f.words)}")
        elif f.fields is not None and f.kind == OBJECT:
            found += problems(f.fields, v, f"{at}.")
        elif f.fields is not None and f.kind == LIST:
            for i, item in enumerate(v):
                found += problems(f.fields, item, f"{at}[{i}].")
    return found
