"""check_order: the one rule set shared by REST batches and CSV import."""

from datetime import UTC, datetime

import pytest

from crm_service.customers.rules import check_customer, normalize_email, normalize_phone
from crm_service.ingestion.records import OrderRules, check_order
from crm_service.platform.config import load_settings

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture()
def rules():
    return OrderRules.from_settings(load_settings({"CRM_TIMEZONE": "Asia/Shanghai",
                                                   "CRM_CURRENCY": "CNY"}), now=NOW)


def ok(rules, **kw):
    base = {"order_id": "O1", "customer_id": "C1", "channel": "tmall",
            "ordered_at": "2024-05-01T10:00:00+08:00", "amount": "10.50"}
    base.update(kw)
    row, errors = check_order(rules, *(base.get(k) for k in (
        "order_id", "customer_id", "channel", "ordered_at", "amount", "currency", "status")))
    return row, errors


@pytest.mark.parametrize(("raw", "expected"), [
    ("2024-05-01T10:00:00+08:00", "2024-05-01T10:00:00+08:00"),
    ("2024-05-01T02:00:00Z", "2024-05-01T02:00:00Z"),
    ("2024-05-01T10:00:00", "2024-05-01T10:00:00+08:00"),  # naive -> CRM_TIMEZONE
    ("2024-05-01 10:00", "2024-05-01T10:00:00+08:00"),
    ("2024-05-01", "2024-05-01T00:00:00+08:00"),            # date -> local midnight
    ("2024-05-01T10:00:00.250-05:00", "2024-05-01T10:00:00.250-05:00"),
])
def test_timestamps(rules, raw, expected):
    row, errors = ok(rules, ordered_at=raw)
    assert errors == {} and row[3] == expected


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "required"),
    ("yesterday", "not an ISO 8601"),
    ("05/01/2024", "not an ISO 8601"),
    ("2024-02-30", "not a valid calendar date"),
    ("2024-05-01T25:00", "not a valid calendar date"),
    ("1989-12-31", "before 1990-01-01"),
    ("2024-06-03T00:00:00Z", "more than one day in the future"),
])
def test_bad_timestamps(rules, raw, reason):
    row, errors = ok(rules, ordered_at=raw)
    assert row is None and reason in errors["ordered_at"]


def test_one_day_ahead_is_still_accepted(rules):
    assert ok(rules, ordered_at="2024-06-02T11:00:00Z")[1] == {}


@pytest.mark.parametrize(("raw", "norm"), [
    ("10", "10"), ("10.5", "10.5"), ("0", "0"), (19.99, "19.99"), (7, "7"), (12.0, "12.0"),
    (" 3.20 ", "3.20"),
])
def test_amounts(rules, raw, norm):
    row, errors = ok(rules, amount=raw)
    assert errors == {} and row[4] == norm


@pytest.mark.parametrize(("raw", "reason"), [
    ("-1", "must be >= 0"), (-0.5, "must be >= 0"), ("1.234", "at most 2 decimal places"),
    (0.1 + 0.2, "at most 2 decimal places"), ("abc", "not a decimal number"), (None, "required"),
    (True, "must be a number"), ("1e3", "not a decimal number"),
])
def test_bad_amounts(rules, raw, reason):
    row, errors = ok(rules, amount=raw)
    assert row is None and reason in errors["amount"]


def test_currency_defaults_and_must_match(rules):
    assert ok(rules)[0][5] == "CNY"
    assert ok(rules, currency="cny")[0][5] == "CNY"
    row, errors = ok(rules, currency="USD")
    assert row is None and errors["currency"] == "must be CNY (CRM_CURRENCY)"


def test_status_and_channel_are_normalised(rules):
    row, _ = ok(rules, status="Refunded", channel=" TMall ")
    assert row[6] == "refunded" and row[2] == "tmall"
    assert ok(rules)[0][6] == "paid"
    assert "status" in ok(rules, status="shipped")[1]
    assert "channel" in ok(rules, channel="tm all")[1]


def test_ids_required_bounded_printable(rules):
    assert ok(rules, order_id="  ")[1]["order_id"] == "required"
    assert "longer than 128" in ok(rules, customer_id="x" * 129)[1]["customer_id"]
    assert "control" in ok(rules, order_id="a\tb")[1]["order_id"]


def test_all_errors_reported_at_once(rules):
    _, errors = ok(rules, order_id="", amount="-1", ordered_at="nope", status="lost")
    assert set(errors) == {"order_id", "amount", "ordered_at", "status"}


def test_email_and_phone_normalisation():
    assert normalize_email("  Li.Wei@Example.COM ") == "li.wei@example.com"
    assert normalize_email("not-an-email") is None
    assert normalize_phone("+86 138-0013-8000") == "+8613800138000"
    assert normalize_phone("0086 (138) 0013 8000") == "+8613800138000"
    assert normalize_phone("138 0013 8000") == "13800138000"
    assert normalize_phone("call me") is None


def test_check_customer_partial_and_clear():
    profile, errors = check_customer({"customer_id": "C1", "email": None, "name": "Li"})
    assert errors == {}
    assert profile.values == {"email": None, "email_normalized": None, "name": "Li"}
    _, errors = check_customer({"customer_id": "", "email": "x", "phone": "1",
                                "identities": [{"channel": "", "external_id": ""}]})
    assert set(errors) == {"customer_id", "email", "phone", "identities.0.channel",
                           "identities.0.external_id"}
