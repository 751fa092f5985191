"""The tier card and the profile, defined once (crm_service.customers.cards), and every way they
are built checked against that one definition: the OpenAPI schemas, the SQL-built card of the
lookup lane, the Flask views, and the provisional answer recomputed in Python.

Real PostgreSQL (embedded), real requests through the app.
"""

import json
from datetime import date

import pytest
from marshmallow import fields
from werkzeug.test import Client

from api.schemas import CustomerProfileSchema, CustomerTierSchema
from crm_service.customers import cards, profiles
from crm_service.scoring import run_scoring
from crm_service.storage import lookups
from tests.test_fastpath import ids

_KINDS = {cards.STRING: fields.String, cards.DATE: fields.String,
          cards.TIMESTAMP: fields.String, cards.INTEGER: fields.Integer,
          cards.NUMBER: fields.Float, cards.BOOLEAN: fields.Boolean}


def _schema_problems(card, schema, where=""):
    """Where the marshmallow schema (and so the OpenAPI document) disagrees with the card."""
    found = []
    declared = schema.fields
    if set(declared) != set(cards.names(card)):
        found.append(f"{where or 'schema'}: {sorted(set(declared) ^ set(cards.names(card)))}")
    for f in card:
        field = declared.get(f.name)
        if field is None:
            continue
        at = where + f.name
        if field.allow_none != f.nullable:
            found.append(f"{at}: allow_none {field.allow_none}, card nullable {f.nullable}")
        if f.kind == cards.LIST:
            if not isinstance(field, fields.List) or not isinstance(field.inner, fields.Nested):
                found.append(f"{at}: not a list of objects")
            else:
                found += _schema_problems(f.fields, field.inner.schema, at + "[].")
        elif f.kind == cards.OBJECT and f.open:
            if not isinstance(field, fields.Dict):
                found.append(f"{at}: not an open object (Dict)")
        elif f.kind == cards.OBJECT:
            if not isinstance(field, fields.Nested):
                found.append(f"{at}: not a nested object")
            else:
                found += _schema_problems(f.fields, field.schema, at + ".")
        elif not isinstance(field, _KINDS[f.kind]):
            found.append(f"{at}: {type(field).__name__} for a {f.kind}")
        enum = field.metadata.get("enum")
        if enum is not None and tuple(enum) != f.words:
            found.append(f"{at}: documented words {enum} are not the card's {f.words}")
    return found


def test_the_schemas_document_the_cards():
    assert _schema_problems(cards.TIER_CARD, CustomerTierSchema()) == []
    assert _schema_problems(cards.PROFILE_CARD, CustomerProfileSchema()) == []


def test_the_schema_check_finds_a_difference():
    """The check above can fail: a card with one more field, or a field made nullable."""
    extra = (*cards.TIER_CARD, cards.Field("lifetime_value", cards.NUMBER))
    assert _schema_problems(extra, CustomerTierSchema())
    loose = tuple(cards.Field(f.name, f.kind, nullable=True, words=f.words, fields=f.fields)
                  if f.name == "tier" else f for f in cards.TIER_CARD)
    assert _schema_problems(loose, CustomerTierSchema())


def test_the_sql_card_is_written_from_the_definition():
    """A field without an SQL expression (or an expression for no field) fails loudly."""
    extra = (*cards.TIER_CARD, cards.Field("lifetime_value", cards.NUMBER))
    with pytest.raises(RuntimeError, match="lifetime_value"):
        lookups._select(extra, lookups._TIER_SQL)
    with pytest.raises(RuntimeError, match="p_alive"):
        lookups._select(tuple(f for f in cards.TIER_CARD if f.name != "p_alive"),
                        lookups._TIER_SQL)


def test_problems_finds_what_differs():
    good = {"run_id": 3, "as_of": "1998-06-30", "from_tier": None, "to_tier": "active"}
    assert cards.problems(cards.TRANSITION, good) == []
    assert cards.problems(cards.TRANSITION, {**good, "to_tier": "gold"})  # not a tier
    assert cards.problems(cards.TRANSITION, {**good, "to_tier": None})  # not nullable
    assert cards.problems(cards.TRANSITION, {**good, "as_of": "30/06/1998"})  # not a date
    assert cards.problems(cards.TRANSITION, {**good, "run_id": True})  # a bool is no integer
    assert cards.problems(cards.TRANSITION, {**good, "extra": 1})  # a key too many
    assert cards.problems(cards.TRANSITION, {k: v for k, v in good.items() if k != "as_of"})


def test_every_path_answers_the_card(cdnow_loaded, settings, app, client, make_token):
    """The SQL card, the lane, the Flask views and the provisional answer, for every tier, with
    and without contact details, all match the one definition."""
    run = run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    some = ids(cdnow_loaded, run.run_id, 60)
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    r = client.post("/v1/customers", headers=admin, json={"customers": [{
        "customer_id": cid, "email": f"{cid}@example.com", "phone": "+86 138 0000 0001",
        "identities": [{"channel": "tmall", "external_id": f"tb_{cid}"}]}
        for cid in some[::3]]})
    assert r.status_code == 200
    # Orders after the run for some: their answers are provisional (Python, in the Flask view).
    late = some[1::4]
    r = client.post("/v1/orders", headers=admin, json={"orders": [{
        "order_id": f"late-{cid}", "customer_id": cid, "channel": "web",
        "ordered_at": "1998-07-03", "amount": 20} for cid in [*late, "first-timer"]]})
    assert r.status_code == 200

    tiers_seen, provisional_seen = set(), 0
    for contact in (False, True):
        for profile in (False, True):
            built = lookups.card_json(cdnow_loaded, some, profile=profile, contact=contact)
            cdnow_loaded.commit()
            assert set(built) == set(some) - set(late)  # provisional ones are Python's
            card = cards.PROFILE_CARD if profile else cards.TIER_CARD
            for cid, raw in built.items():
                assert cards.problems(card, json.loads(raw)) == [], ("sql", cid)
    reader = {"Authorization": f"Bearer {make_token('scores:read')}"}
    agent = {"Authorization": f"Bearer {make_token('customers:read')}"}
    flask_only = Client(app.wsgi_app.fallback)
    for cid in some:
        for path, headers, card in ((f"/v1/customers/{cid}/tier", reader, cards.TIER_CARD),
                                    (f"/v1/customers/{cid}", reader, cards.PROFILE_CARD),
                                    (f"/v1/customers/{cid}", agent, cards.PROFILE_CARD)):
            for name, answer in (("lane", client.get(path, headers=headers)),
                                 ("flask", flask_only.get(path, headers=headers))):
                assert answer.status_code == 200, (name, path)
                body = answer.json
                assert cards.problems(card, body) == [], (name, path)
                tiers_seen.add(body["tier"])
                provisional_seen += body["provisional"]
                assert body["provisional"] == (cid in late)
    assert tiers_seen == {"active", "dormant", "high_value"}  # CDNOW has no new one by then
    assert provisional_seen == len(late) * 6
    # A first order after the run: a provisional "new" customer, from Python alone.
    for path, headers, card in (("/v1/customers/first-timer/tier", reader, cards.TIER_CARD),
                                ("/v1/customers/first-timer", agent, cards.PROFILE_CARD)):
        body = client.get(path, headers=headers).json
        assert cards.problems(card, body) == [] and body["tier"] == "new", path
        assert body["provisional"] is True


def test_a_profile_without_a_run_answers_the_card(cdnow_loaded, client, make_token):
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert client.post("/v1/customers", headers=admin, json={"customers": [{
        "customer_id": "walk-in-1", "name": "Wang Fang"}]}).status_code == 200
    body = client.get("/v1/customers/walk-in-1", headers=admin).json
    assert cards.problems(cards.PROFILE_CARD, body) == []
    assert body["scores"] is None and body["run_id"] is None
    assert profiles.cards(cdnow_loaded, ["walk-in-1"], profile=True) == {}
