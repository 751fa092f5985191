"""Erasure (SQL): the erased-id list, one customer's rows deleted everywhere, and their export.

The deletes reach every table that holds a customer's data; a new table that does must be added
to :func:`delete_customer` (``tests/test_erasure.py`` plants a canary in each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row

from crm_service.storage.locks import lock_exclusive
from crm_service.storage.scores import erase_customer_scores

T = TypeVar("T")


def any_erased(conn: psycopg.Connection) -> bool:
    """True once any customer has been erased (ingestion checks only then)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM erased_customers)").fetchone()
    return bool(row and row[0])


def erased_among(conn: psycopg.Connection, digests: list[bytes]) -> set[bytes]:
    """Which of the id digests are on the erased list."""
    rows = conn.execute("SELECT id_hash FROM erased_customers WHERE id_hash = ANY(%s)",
                        (digests,)).fetchall()
    return {bytes(r[0]) for r in rows}


def erased_digests(conn: psycopg.Connection) -> set[bytes]:
    """The whole erased list (a bulk import loads it once, under the writers' lock)."""
    return {bytes(r[0]) for r in conn.execute("SELECT id_hash FROM erased_customers")}


def suppress(conn: psycopg.Connection, digests: list[bytes]) -> None:
    """Put keyed digests (of ids or channel accounts) on the erased list."""
    if digests:
        conn.execute("INSERT INTO erased_customers (id_hash) SELECT unnest(%s::bytea[])"
                     " ON CONFLICT (id_hash) DO UPDATE SET erased_at = now()", (digests,))


@dataclass(frozen=True)
class Erased:
    """What :func:`delete_customer` removed, and the ``customer.erased`` event it wrote."""

    removed: dict[str, int]
    event_id: int


def delete_customer(conn: psycopg.Connection, customer_id: str, digest: bytes) -> Erased | None:
    """Delete everything held about ``customer_id`` and put ``digest`` on the erased list.

    Run inside the caller's transaction. Returns None, having changed nothing, when nothing is
    held about the customer.
    """
    # Wait for REST batches and imports in flight (new ones wait for this), and serialise with
    # publishing, so no concurrent writer brings the customer back and event ids stay in
    # commit order.
    lock_exclusive(conn)
    conn.execute("SELECT 1 FROM scoring_state FOR UPDATE")
    exists = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM customers WHERE customer_id = %(c)s)"
        " OR EXISTS (SELECT 1 FROM orders WHERE customer_id = %(c)s)",
        {"c": customer_id}).fetchone()
    if not (exists and exists[0]):
        return None
    removed: dict[str, int] = {}

    def run(name: str, statement: str, params: dict[str, Any] | None = None) -> None:
        removed[name] = conn.execute(statement, params or {"c": customer_id}).rowcount

    # What merges moved of theirs (by key: an order or account that a merge moved and that is
    # theirs now, or that came from them), before their orders and accounts go.
    removed["merge_moves"] = conn.execute(
        "DELETE FROM customer_merge_orders m USING orders o WHERE o.customer_id = %(c)s"
        " AND m.channel = o.channel AND m.order_id = o.order_id", {"c": customer_id}).rowcount
    removed["merge_moves"] += conn.execute(
        "DELETE FROM customer_merge_identities m USING customer_identities i"
        " WHERE i.customer_id = %(c)s AND m.channel = i.channel"
        " AND m.external_id = i.external_id", {"c": customer_id}).rowcount
    removed["merge_moves"] += conn.execute(
        "DELETE FROM customer_merge_orders WHERE from_id = %(c)s", {"c": customer_id}).rowcount
    removed["merge_moves"] += conn.execute(
        "DELETE FROM customer_merge_identities WHERE from_id = %(c)s",
        {"c": customer_id}).rowcount
    run("orders", "DELETE FROM orders WHERE customer_id = %(c)s")
    run("identities", "DELETE FROM customer_identities WHERE customer_id = %(c)s")
    run("profile", "DELETE FROM customers WHERE customer_id = %(c)s")
    removed["scores"] = erase_customer_scores(conn, customer_id)
    run("tier_transitions", "DELETE FROM tier_transitions WHERE customer_id = %(c)s")
    # Merge records name the customer (as survivor or merged; the moved rows go with them) and
    # so do the linking rules' review pairs.
    # ... and the merge records naming them anywhere: survivor, merged, or in `details` (an
    # alias re-pointed, a contact field's source), matched as the JSON string of the id.
    run("merges", "DELETE FROM customer_merges WHERE survivor_id = %(c)s"
                  " OR merged_ids @> ARRAY[%(c)s]::text[]"
                  " OR position(to_jsonb(%(c)s::text)::text IN details::text) > 0")
    run("link_candidates", "DELETE FROM identity_link_candidates"
                           " WHERE customer_a = %(c)s OR customer_b = %(c)s")
    run("webhook_deliveries",
        "DELETE FROM webhook_deliveries WHERE event_id IN"
        " (SELECT id FROM events WHERE customer_id = %(c)s)")
    run("events", "DELETE FROM events WHERE customer_id = %(c)s")
    # Stored responses of Idempotency-Key requests that name the customer (as JSON text).
    needles = sorted({json.dumps(customer_id), json.dumps(customer_id, ensure_ascii=False)})
    run("idempotency_records",
        "DELETE FROM idempotency_records WHERE response_body IS NOT NULL"
        " AND (position(%(a)s IN response_body) > 0 OR position(%(b)s IN response_body) > 0)",
        {"a": needles[0].encode(), "b": needles[-1].encode()})
    conn.execute("INSERT INTO erased_customers (id_hash) VALUES (%s)"
                 " ON CONFLICT (id_hash) DO UPDATE SET erased_at = now()", (digest,))
    event = conn.execute(
        "INSERT INTO events (type, customer_id, run_id, data)"
        " VALUES ('customer.erased', NULL, NULL, jsonb_build_object('customer_ref', %s::text,"
        " 'erased_at', now())) RETURNING id", (digest.hex(),)).fetchone()
    assert event is not None  # INSERT ... RETURNING returns its row
    return Erased(removed=removed, event_id=int(event[0]))


@dataclass(frozen=True)
class HeldProfile:
    """The stored profile of one customer."""

    email: str | None
    phone: str | None
    name: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class HeldOrder:
    """One stored order."""

    channel: str
    order_id: str
    ordered_at: datetime
    amount: str
    currency: str
    status: str
    received_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class HeldIdentity:
    """One channel identity."""

    channel: str
    external_id: str
    linked_at: datetime


@dataclass(frozen=True)
class HeldTransition:
    """One tier change."""

    run_id: int
    from_tier: str | None
    to_tier: str


@dataclass(frozen=True)
class HeldEvent:
    """One lifecycle event about the customer."""

    id: int
    type: str
    run_id: int | None
    occurred_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class HeldData:
    """Everything stored about one customer (GDPR Art. 20)."""

    profile: HeldProfile | None
    orders: list[HeldOrder]
    identities: list[HeldIdentity]
    scores: list[dict[str, Any]]
    transitions: list[HeldTransition]
    events: list[HeldEvent]


def _rows(conn: psycopg.Connection, cls: type[T], statement: str, customer_id: str) -> list[T]:
    cur: psycopg.Cursor[T]
    with conn.cursor(row_factory=class_row(cls)) as cur:
        return cur.execute(statement, (customer_id,)).fetchall()


def held_data(conn: psycopg.Connection, customer_id: str) -> HeldData:
    """Every row held about ``customer_id``, in a stable order."""
    profiles = _rows(conn, HeldProfile,
                     "SELECT email, phone, name, created_at, updated_at FROM customers"
                     " WHERE customer_id = %s", customer_id)
    scores = conn.execute(
        "SELECT to_jsonb(s) - 'customer_id' FROM customer_scores s"
        " WHERE customer_id = %s AND run_id IN (SELECT id FROM scoring_runs) ORDER BY run_id",
        (customer_id,)).fetchall()
    return HeldData(
        profile=profiles[0] if profiles else None,
        orders=_rows(conn, HeldOrder,
                     "SELECT channel, order_id, ordered_at, amount::text AS amount, currency,"
                     " status, created_at AS received_at, updated_at FROM orders"
                     " WHERE customer_id = %s ORDER BY ordered_at, channel, order_id",
                     customer_id),
        identities=_rows(conn, HeldIdentity,
                         "SELECT channel, external_id, created_at AS linked_at"
                         " FROM customer_identities WHERE customer_id = %s"
                         " ORDER BY channel, external_id", customer_id),
        scores=[r[0] for r in scores],
        transitions=_rows(conn, HeldTransition,
                          "SELECT run_id, from_tier, to_tier FROM tier_transitions"
                          " WHERE customer_id = %s ORDER BY run_id", customer_id),
        events=_rows(conn, HeldEvent,
                     "SELECT id, type, run_id, created_at AS occurred_at, data FROM events"
                     " WHERE customer_id = %s ORDER BY id", customer_id))
