"""Order ingestion rules, shared by REST batches and CSV bulk import.

One function, :func:`check_order`, decides whether a record is acceptable and normalises it; both
entry points call it, so a record is accepted or rejected for the same reason wherever it comes
from. Storage (staging, merge) lives in :mod:`crm_service.storage.orders`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from crm_service.customers.ids import CHANNEL, MAX_ID_LENGTH, UNADDRESSABLE, addressable
from crm_service.errors import BatchTooLargeError
from crm_service.platform.config import Settings
from crm_service.privacy import erasure
from crm_service.storage import identities as store_identities
from crm_service.storage import orders as order_store
from crm_service.storage.locks import lock_shared
from crm_service.vocabulary import ORDER_STATUSES

if TYPE_CHECKING:
    import psycopg

EARLIEST_ORDER = date(1990, 1, 1)

# [0-9], not \d: \d also matches Arabic-Indic or full-width digits, which PostgreSQL rejects.
_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,2})?")
_NEGATIVE_AMOUNT = re.compile(r"-[0-9]+(?:\.[0-9]+)?")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)
_MAX_OFFSET = timedelta(hours=15, minutes=59)  # PostgreSQL's limit for a UTC offset

# One normalised order, in the column order of the staging table.
OrderRow = tuple[str, str, str, str, str, str, str]


@dataclass(frozen=True)
class OrderRules:
    """What makes an order acceptable: reporting zone, currency, the accepted time window."""

    zone: ZoneInfo
    currency: str
    earliest: datetime
    latest: datetime

    @classmethod
    def from_settings(cls, settings: Settings, now: datetime | None = None) -> OrderRules:
        """Rules in force now: orders from 1990-01-01 (local) up to one day ahead."""
        zone = settings.zone
        now = now or datetime.now(UTC)
        earliest = datetime.combine(EARLIEST_ORDER, datetime.min.time(), tzinfo=zone)
        return cls(zone=zone, currency=settings.currency, earliest=earliest,
                   latest=now + timedelta(days=1))


def _clean_id(value: Any, name: str, errors: dict[str, str]) -> str:
    if value is None:
        errors[name] = "required"
        return ""
    text = (value if type(value) is str else str(value)).strip()
    if not text:
        errors[name] = "required"
    elif len(text) > MAX_ID_LENGTH:
        errors[name] = f"longer than {MAX_ID_LENGTH} characters"
    elif not text.isprintable():
        errors[name] = "contains control characters"
    return text


# Channel, status and currency take few distinct values: their checks are cached, which keeps a
# multi-million-row import from spending its time re-validating "tmall".
@lru_cache(maxsize=4096)
def _check_channel(raw: str) -> tuple[str, str | None]:
    chan = raw.strip().lower()
    if not chan:
        return chan, "required"
    if not CHANNEL.fullmatch(chan):
        return chan, "1-32 characters: letters, digits, '_', '.', '-'"
    return chan, None


@lru_cache(maxsize=1024)
def _check_status(raw: str) -> tuple[str, str | None]:
    stat = raw.strip().lower() or "paid"
    if stat not in ORDER_STATUSES:
        return stat, "must be one of paid, refunded, cancelled"
    return stat, None


@lru_cache(maxsize=1024)
def _check_currency(raw: str, expected: str) -> tuple[str, str | None]:
    cur = raw.strip().upper() or expected
    if cur != expected:
        return cur, f"must be {expected} (CRM_CURRENCY)"
    return cur, None


def _parse_ordered_at(value: Any, rules: OrderRules, errors: dict[str, str]) -> str | None:
    """The timestamp as ISO 8601 text with an explicit offset, ready for PostgreSQL."""
    text = "" if value is None else str(value).strip()
    if not text:
        errors["ordered_at"] = "required"
        return None
    # The regexes admit only forms that Python and PostgreSQL read identically.
    if _ISO_DATE.fullmatch(text):
        naive = True
    elif _ISO_DATETIME.fullmatch(text):
        naive = text[-1] not in "Zz" and text[-3] not in "+-" and text[-5] not in "+-" \
            and text[-6] not in "+-"
    else:
        errors["ordered_at"] = "not an ISO 8601 date or datetime (e.g. 2024-05-01T10:30:00+08:00)"
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        errors["ordered_at"] = "not a valid calendar date or time"
        return None
    if naive:
        # Naive values (and bare dates, at midnight) are local time in CRM_TIMEZONE.
        parsed = parsed.replace(tzinfo=rules.zone)
        text = parsed.isoformat()
    elif abs(parsed.utcoffset() or timedelta(0)) > _MAX_OFFSET:
        errors["ordered_at"] = "UTC offset out of range (at most +/-15:59)"
        return None
    # Cheap year test first; exact comparison only near the edges of the window.
    year = parsed.year
    if year <= rules.earliest.year or year >= rules.latest.year:
        if parsed < rules.earliest:
            errors["ordered_at"] = "before 1990-01-01"
        elif parsed > rules.latest:
            errors["ordered_at"] = "more than one day in the future"
    return text


def _parse_amount(value: Any, errors: dict[str, str]) -> str:
    if value is None or isinstance(value, bool):
        errors["amount"] = "required" if value is None else "must be a number"
        return ""
    if type(value) is str:
        text = value.strip()
    elif isinstance(value, float):
        # repr gives the shortest round-trip form, so 19.99 stays "19.99" and 0.1+0.2 is caught.
        text = repr(value)
    elif isinstance(value, int | Decimal):
        text = str(value)
    else:
        text = str(value).strip()
    if _AMOUNT.fullmatch(text):
        return text
    if not text:
        errors["amount"] = "required"
    elif _NEGATIVE_AMOUNT.fullmatch(text):
        errors["amount"] = "must be >= 0"
    elif re.fullmatch(r"[0-9]+\.[0-9]{3,}", text):
        errors["amount"] = "at most 2 decimal places"
    else:
        errors["amount"] = "not a decimal number (e.g. 129.90)"
    return text


def check_order(
    rules: OrderRules,
    order_id: Any,
    customer_id: Any,
    channel: Any,
    ordered_at: Any,
    amount: Any,
    currency: Any = None,
    status: Any = None,
    buyer_id: Any = None,
) -> tuple[OrderRow | None, dict[str, str]]:
    """Validate and normalise one order.

    Returns ``(row, {})`` for an acceptable order, or ``(None, errors)`` where ``errors`` maps
    each offending field to a human-readable reason. Channel and status are lower-cased, ids
    trimmed, the currency defaults to ``CRM_CURRENCY`` and the status to ``paid``.

    An order names its customer by ``customer_id``, by ``buyer_id`` (the buyer's account on the
    order's channel, resolved through the identity graph by the caller), or both; with
    ``buyer_id`` alone the row's customer id is ``""`` (:func:`buyer_of` gives the account).
    """
    errors: dict[str, str] = {}
    oid = _clean_id(order_id, "order_id", errors)
    has_buyer = buyer_id is not None and (type(buyer_id) is not str or buyer_id.strip() != "")
    if has_buyer:
        _clean_id(buyer_id, "buyer_id", errors)
    if has_buyer and (customer_id is None or str(customer_id).strip() == ""):
        cid = ""
    else:
        cid = _clean_id(customer_id, "customer_id", errors)
        if errors.get("customer_id") == "required":
            errors["customer_id"] = "required (or buyer_id: the buyer's account on the channel)"
    if cid and "customer_id" not in errors and not addressable(cid):
        errors["customer_id"] = UNADDRESSABLE
    chan, problem = _check_channel("" if channel is None else str(channel))
    if problem:
        errors["channel"] = problem
    when = _parse_ordered_at(ordered_at, rules, errors)
    amt = _parse_amount(amount, errors)
    cur, problem = _check_currency("" if currency is None else str(currency), rules.currency)
    if problem:
        errors["currency"] = problem
    stat, problem = _check_status("" if status is None else str(status))
    if problem:
        errors["status"] = problem
    if errors or when is None:
        return None, errors
    return (oid, cid, chan, when, amt, cur, stat), {}


def buyer_of(buyer_id: Any) -> str | None:
    """The checked buyer id of an order (after :func:`check_order` accepted it), or None."""
    if buyer_id is None:
        return None
    text = (buyer_id if type(buyer_id) is str else str(buyer_id)).strip()
    return text or None


def _echo(record: Mapping[str, Any], *names: str) -> dict[str, str]:
    """The record's identifying fields, when they are strings, so a rejection can be matched."""
    return {n: record[n] for n in names if isinstance(record.get(n), str)}


@dataclass
class BatchResult:
    """Outcome of one REST batch: one entry per record, by index, and the totals."""

    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        """Count of records per outcome."""
        counts = {"inserted": 0, "updated": 0, "duplicate": 0, "rejected": 0}
        for item in self.results:
            counts[item["outcome"]] += 1
        return counts


SUPPRESSED = "this customer was erased; data for the id is no longer accepted"
SUPPRESSED_ACCOUNT = ("this channel account's customer was erased; data for the account is no "
                      "longer accepted")


def ingest_order_batch(
    conn: psycopg.Connection,
    settings: Settings,
    records: list[Mapping[str, Any] | dict[str, str]],
    *,
    pre_rejected: Mapping[int, dict[str, str]] | None = None,
) -> BatchResult:
    """Validate and merge one batch of orders in the caller's transaction.

    ``records`` are mappings with the order fields; ``pre_rejected`` carries records the caller
    already rejected (e.g. wrong JSON types), by index, so the result still lists every index.
    Valid records are merged in order: a later record for the same (channel, order_id) sees the
    earlier one, so "paid" then "refunded" in one batch gives ``inserted`` then ``updated``.
    """
    if len(records) > settings.max_batch_orders:
        raise BatchTooLargeError(
            f"{len(records)} orders in one batch; the limit is {settings.max_batch_orders}"
        )
    pre_rejected = pre_rejected or {}
    rules = OrderRules.from_settings(settings)
    outcomes: dict[int, dict[str, Any]] = {}
    valid: list[tuple[int, OrderRow]] = []
    buyers: dict[int, str] = {}
    for index, record in enumerate(records):
        row, errors = check_order(
            rules,
            record.get("order_id"),
            record.get("customer_id"),
            record.get("channel"),
            record.get("ordered_at"),
            record.get("amount"),
            record.get("currency"),
            record.get("status"),
            record.get("buyer_id"),
        )
        if index in pre_rejected:
            # Report every problem at once: the caller's type errors, and the rule checks.
            row, errors = None, {**errors, **pre_rejected[index]}
        if row is None:
            outcomes[index] = {"outcome": "rejected", "errors": errors,
                               **_echo(record, "channel", "order_id")}
        else:
            valid.append((index, row))
            buyer = buyer_of(record.get("buyer_id"))
            if buyer is not None:
                buyers[index] = buyer
    given = {index: row[1] for index, row in valid}
    if valid:
        # After the writers' lock: an erasure or a merge (which take it exclusively) is either
        # committed and seen here, or waits for this batch.
        lock_shared(conn, settings.ingest_lock_wait_seconds)
        valid, links = _resolve_customers(conn, settings, valid, buyers, outcomes)
        gone = erasure.suppressed(conn, settings, [row[1] for _, row in valid])
        if gone:
            for index, row in valid:
                if row[1] in gone:
                    outcomes[index] = {"outcome": "rejected", "errors": {
                        "customer_id": SUPPRESSED}, "channel": row[2], "order_id": row[0]}
            valid = [(i, row) for i, row in valid if row[1] not in gone]
            links = [link for link in links if link[2] not in gone]
        store_identities.create_customers_with_identities(conn, links)
    if valid:
        merged = order_store.merge_orders(conn, valid,
                                          lock_wait_seconds=settings.ingest_lock_wait_seconds)
        for index, row in valid:
            outcome = merged.per_row.get(index, "duplicate")
            outcomes[index] = {"outcome": outcome, "channel": row[2], "order_id": row[0],
                               "customer_id": row[1]}
            if given[index] and given[index] != row[1]:
                outcomes[index]["merged_into"] = row[1]
    result = BatchResult()
    for index in range(len(records)):
        result.results.append({"index": index, **outcomes[index]})
    return result


def _resolve_customers(conn: psycopg.Connection, settings: Settings,
                       valid: list[tuple[int, OrderRow]], buyers: Mapping[int, str],
                       outcomes: dict[int, dict[str, Any]]
                       ) -> tuple[list[tuple[int, OrderRow]], list[tuple[str, str, str]]]:
    """Each order's customer: its channel account's, a new one for a new account, a survivor.

    Orders naming a merged customer go to the survivor. An order naming both a customer and an
    account that belongs to another customer is rejected (in ``outcomes``). Returns the orders
    and the new (channel, account, customer) links for the caller to create.
    """
    from crm_service.customers import identities

    aliases = identities.resolve_aliases(conn, [row[1] for _, row in valid if row[1]])
    owners = store_identities.claim_identities(
        conn, sorted({(row[2], buyers[i]) for i, row in valid if i in buyers}))
    gone = erasure.suppressed_accounts(conn, settings, [
        (row[2], buyers[i]) for i, row in valid if i in buyers
        and (row[2], buyers[i]) not in owners])
    key = identities.identity_key(settings) if buyers else b""
    links: list[tuple[str, str, str]] = []
    out: list[tuple[int, OrderRow]] = []
    for index, row in valid:
        cid = aliases.get(row[1], row[1])
        buyer = buyers.get(index)
        if buyer is not None:
            account = (row[2], buyer)
            owner = owners.get(account)
            if account in gone:
                outcomes[index] = {"outcome": "rejected", "errors": {
                    "buyer_id": SUPPRESSED_ACCOUNT}, "channel": row[2], "order_id": row[0]}
                continue
            if not cid:
                cid = owner or identities.generated_id(key, row[2], buyer)
            elif owner is not None and owner != cid:
                outcomes[index] = {"outcome": "rejected", "errors": {
                    "buyer_id": f"{row[2]} account {buyer!r} belongs to another customer, not "
                                f"{row[1]!r}; send one of the two, or merge the customers"},
                    "channel": row[2], "order_id": row[0]}
                continue
            if owner is None:
                owners[account] = cid
                links.append((row[2], buyer, cid))
        out.append((index, (row[0], cid, *row[2:])))  # type: ignore[arg-type]
    return out, links


def check_account(channel: Any, buyer_id: Any) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """A channel account (channel, buyer id) of a profile, or the errors."""
    errors: dict[str, str] = {}
    chan, problem = _check_channel("" if channel is None else str(channel))
    if problem:
        errors["channel"] = problem
    buyer = _clean_id(buyer_id, "buyer_id", errors)
    return (None, errors) if errors else ((chan, buyer), {})


def _profiles_by_account(conn: psycopg.Connection, settings: Settings,
                         records: list[Mapping[str, Any]],
                         pre_rejected: Mapping[int, dict[str, str]],
                         outcomes: dict[int, dict[str, Any]]) -> list[Mapping[str, Any]]:
    """Profiles sent with ``channel`` + ``buyer_id`` instead of ``customer_id``, resolved.

    A known account gives its customer, a new one its generated id (and the account joins the
    profile's identities); a bad account is rejected in ``outcomes``.
    """
    from crm_service.customers import identities

    accounts: dict[int, tuple[str, str]] = {}
    for index, record in enumerate(records):
        if index in pre_rejected or "buyer_id" not in record:
            continue
        account, errors = check_account(record.get("channel"), record.get("buyer_id"))
        if account is None:
            outcomes[index] = {"outcome": "rejected", "errors": errors}
        else:
            accounts[index] = account
    if not accounts:
        return [{k: v for k, v in r.items() if k not in ("channel", "buyer_id")}
                for r in records]
    # Every account the batch names, the profiles' identities too, locked in one sorted pass
    # (two passes could deadlock with a batch naming the same accounts the other way round).
    listed = {(str(i.get("channel") or "").strip().lower(), str(i.get("external_id") or "").strip())
              for r in records for i in (r.get("identities") or []) if isinstance(i, Mapping)}
    owners = store_identities.claim_identities(conn, sorted(set(accounts.values()) | listed))
    gone = erasure.suppressed_accounts(conn, settings,
                                       [a for a in accounts.values() if a not in owners])
    for index, account in list(accounts.items()):
        if account in gone:
            outcomes[index] = {"outcome": "rejected", "errors": {"buyer_id": SUPPRESSED_ACCOUNT}}
            del accounts[index]
    key = identities.identity_key(settings)
    out: list[Mapping[str, Any]] = []
    for index, record in enumerate(records):
        plain = {k: v for k, v in record.items() if k not in ("channel", "buyer_id")}
        account = accounts.get(index)
        if account is not None:
            if plain.get("customer_id") in (None, ""):
                plain["customer_id"] = owners.get(account) or identities.generated_id(key,
                                                                                     *account)
            # With both ids the account joins the identities: the usual check then rejects
            # it if it is someone else's.
            plain["identities"] = [*(record.get("identities") or []),
                                   {"channel": account[0], "external_id": account[1]}]
        out.append(plain)
    return out


def iter_checked(
    rules: OrderRules, rows: Iterable[tuple[int, list[str]]], columns: Mapping[str, int],
    default_channel: str | None,
) -> Iterator[tuple[int, OrderRow | None, dict[str, str], str, str | None]]:
    """Check CSV rows ``(line_number, fields)`` whose header maps names to ``columns``.

    Yields ``(line, row or None, errors, raw order_id, buyer id or None)``; a row sent with a
    buyer id only has ``""`` as its customer id (see :func:`check_order`).
    """
    i_oid, i_at, i_amt = (columns[c] for c in ("order_id", "ordered_at", "amount"))
    i_cid = columns.get("customer_id")
    i_buyer = columns.get("buyer_id")
    i_chan = columns.get("channel")
    i_cur = columns.get("currency")
    i_stat = columns.get("status")
    for line, fields in rows:
        channel = fields[i_chan] if i_chan is not None else None
        if default_channel and (channel is None or not channel.strip()):
            channel = default_channel
        buyer = fields[i_buyer] if i_buyer is not None else None
        row, errors = check_order(
            rules,
            fields[i_oid],
            fields[i_cid] if i_cid is not None else None,
            channel,
            fields[i_at],
            fields[i_amt],
            fields[i_cur] if i_cur is not None else None,
            fields[i_stat] if i_stat is not None else None,
            buyer,
        )
        yield line, row, errors, fields[i_oid], buyer.strip() if buyer else None


def ingest_customer_batch(
    conn: psycopg.Connection,
    settings: Settings,
    records: list[Mapping[str, Any]],
    *,
    pre_rejected: Mapping[int, dict[str, str]] | None = None,
) -> BatchResult:
    """Validate and upsert a batch of profiles (with channel identities) in one transaction.

    A record whose identity already belongs to another customer is rejected; the others land.
    """
    from crm_service.customers.rules import check_customer
    from crm_service.storage import customers as customer_store

    if len(records) > settings.max_batch_orders:
        raise BatchTooLargeError(
            f"{len(records)} customers in one batch; the limit is {settings.max_batch_orders}"
        )
    pre_rejected = pre_rejected or {}
    lock_shared(conn, settings.ingest_lock_wait_seconds)
    outcomes: dict[int, dict[str, Any]] = {}
    records = _profiles_by_account(conn, settings, records, pre_rejected, outcomes)
    valid = []
    for index, record in enumerate(records):
        if index in outcomes:
            continue
        if index in pre_rejected:
            outcomes[index] = {"outcome": "rejected", "errors": pre_rejected[index],
                               **_echo(record, "customer_id")}
            continue
        profile, errors = check_customer(record, settings.phone_country_code)
        if profile is None:
            outcomes[index] = {"outcome": "rejected", "errors": errors,
                               **_echo(record, "customer_id")}
        else:
            valid.append((index, profile))
    from crm_service.customers import identities

    aliases = identities.resolve_aliases(conn, [p.customer_id for _, p in valid])
    for _, profile in valid:
        profile.customer_id = aliases.get(profile.customer_id, profile.customer_id)
    gone = erasure.suppressed(conn, settings, [p.customer_id for _, p in valid])
    for index, profile in valid:
        if profile.customer_id in gone:
            outcomes[index] = {"outcome": "rejected", "errors": {"customer_id": SUPPRESSED},
                               "customer_id": profile.customer_id}
    valid = [(i, p) for i, p in valid if p.customer_id not in gone]
    owners = customer_store.identity_owners(
        conn, [ident for _, p in valid for ident in p.identities]
    )
    claimed: dict[tuple[str, str], str] = dict(owners)
    accepted = []
    for index, profile in valid:
        clash = {
            f"identities.{i}": f"{chan}/{ext} already belongs to another customer"
            for i, (chan, ext) in enumerate(profile.identities)
            if claimed.get((chan, ext), profile.customer_id) != profile.customer_id
        }
        if clash:
            outcomes[index] = {"outcome": "rejected", "errors": clash,
                               "customer_id": profile.customer_id}
            continue
        for ident in profile.identities:
            claimed[ident] = profile.customer_id
        accepted.append((index, profile))
    merged = customer_store.merge_customers(conn, accepted)
    new_links = customer_store.add_identities(
        conn, [(c, e, p.customer_id) for _, p in accepted for c, e in p.identities
               if (c, e) not in owners]
    )
    linked_by = {p.customer_id for _, p in accepted if any(i not in owners for i in p.identities)}
    for index, profile in accepted:
        outcome = merged.per_row.get(index, "duplicate")
        if outcome == "duplicate" and new_links and profile.customer_id in linked_by:
            outcome = "updated"
        outcomes[index] = {"outcome": outcome, "customer_id": profile.customer_id}
    result = BatchResult()
    for index in range(len(records)):
        result.results.append({"index": index, **outcomes[index]})
    return result
