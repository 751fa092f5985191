"""Erasure and export of one customer's data (GDPR Art. 17 and 20).

:func:`erase` removes, in one transaction, everything held about a customer: the profile,
channel identities, orders, scores of every run, tier history, lifecycle events (and their
queued webhook deliveries), and stored Idempotency-Key responses that mention the customer
(deleted: a replay then re-runs the request, whose records for this customer are suppressed).
It records a keyed hash of the id in ``erased_customers`` so later ingestion for that id is
suppressed, and emits ``customer.erased`` carrying only that hash (``customer_ref``), the same
reference every lifecycle event carries, so downstream tools can erase their copies.

A scoring run that started before the erasure and publishes after it leaves the customer out
(:func:`crm_service.storage.publishing.publish` drops customers that no longer exist).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from crm_service.errors import NotFoundError
from crm_service.platform import secretbox
from crm_service.platform.config import Settings
from crm_service.privacy.refs import PURPOSE, customer_ref
from crm_service.storage.locks import lock_exclusive
from crm_service.storage.scores import erase_customer_scores

if TYPE_CHECKING:
    import psycopg

def suppressed(conn: psycopg.Connection, settings: Settings, ids: list[str]) -> set[str]:
    """Which of ``ids`` were erased (their ingestion is suppressed)."""
    if not ids or not any_erased(conn):
        return set()
    key = secretbox.server_key(settings)
    digests = {secretbox.keyed_digest(key, PURPOSE, i): i for i in set(ids)}
    rows = conn.execute("SELECT id_hash FROM erased_customers WHERE id_hash = ANY(%s)",
                        (list(digests),)).fetchall()
    return {digests[bytes(r[0])] for r in rows}


def any_erased(conn: psycopg.Connection) -> bool:
    """True once any customer has been erased (ingestion checks only then)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM erased_customers)").fetchone()
    return bool(row and row[0])


def erase(conn: psycopg.Connection, settings: Settings, customer_id: str) -> dict[str, Any]:
    """Erase a customer in one transaction; NotFoundError if nothing is held about them.

    Returns the counts of what was removed and the ``customer_ref``.
    """
    key = secretbox.server_key(settings)
    digest = secretbox.keyed_digest(key, PURPOSE, customer_id)
    with conn.transaction():
        # Wait for REST batches and imports in flight (new ones wait for this), and serialise
        # with publishing, so no concurrent writer brings the customer back and event ids stay
        # in commit order.
        lock_exclusive(conn)
        conn.execute("SELECT 1 FROM scoring_state FOR UPDATE")
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM customers WHERE customer_id = %(c)s)"
            " OR EXISTS (SELECT 1 FROM orders WHERE customer_id = %(c)s)",
            {"c": customer_id}).fetchone()
        if not (exists and exists[0]):
            raise NotFoundError(f"no customer {customer_id!r}")
        removed: dict[str, int] = {}

        def run(name: str, statement: str, params: dict[str, Any] | None = None) -> None:
            removed[name] = conn.execute(statement, params or {"c": customer_id}).rowcount

        run("orders", "DELETE FROM orders WHERE customer_id = %(c)s")
        run("identities", "DELETE FROM customer_identities WHERE customer_id = %(c)s")
        run("profile", "DELETE FROM customers WHERE customer_id = %(c)s")

        removed["scores"] = erase_customer_scores(conn, customer_id)
        run("tier_transitions", "DELETE FROM tier_transitions WHERE customer_id = %(c)s")
        run("webhook_deliveries",
            "DELETE FROM webhook_deliveries WHERE event_id IN"
            " (SELECT id FROM events WHERE customer_id = %(c)s)")
        run("events", "DELETE FROM events WHERE customer_id = %(c)s")
        # Stored responses of Idempotency-Key requests that name the customer (as JSON text).
        needles = {json.dumps(customer_id), json.dumps(customer_id, ensure_ascii=False)}
        run("idempotency_records",
            "DELETE FROM idempotency_records WHERE response_body IS NOT NULL"
            " AND (position(%(a)s IN response_body) > 0 OR position(%(b)s IN response_body) > 0)",
            {"a": sorted(needles)[0].encode(), "b": sorted(needles)[-1].encode()})
        conn.execute("INSERT INTO erased_customers (id_hash) VALUES (%s)"
                     " ON CONFLICT (id_hash) DO UPDATE SET erased_at = now()", (digest,))
        ref = digest.hex()
        event = conn.execute(
            "INSERT INTO events (type, customer_id, run_id, data)"
            " VALUES ('customer.erased', NULL, NULL, jsonb_build_object('customer_ref', %s::text,"
            " 'erased_at', now())) RETURNING id", (ref,)).fetchone()
    return {"customer_ref": ref, "removed": removed,
            "event_id": str(event[0]) if event else None}


def export(conn: psycopg.Connection, settings: Settings, customer_id: str) -> dict[str, Any]:
    """Everything held about a customer, as JSON-ready data (GDPR Art. 20)."""
    profile = conn.execute(
        "SELECT customer_id, email, phone, name, created_at, updated_at FROM customers"
        " WHERE customer_id = %s", (customer_id,)).fetchone()
    orders = conn.execute(
        "SELECT channel, order_id, ordered_at, amount::text, currency, status, created_at,"
        " updated_at FROM orders WHERE customer_id = %s ORDER BY ordered_at, channel, order_id",
        (customer_id,)).fetchall()
    if profile is None and not orders:
        raise NotFoundError(f"no customer {customer_id!r}")
    identities = conn.execute(
        "SELECT channel, external_id, created_at FROM customer_identities WHERE customer_id = %s"
        " ORDER BY channel, external_id", (customer_id,)).fetchall()
    scores = conn.execute(
        "SELECT to_jsonb(s) - 'customer_id' FROM customer_scores s"
        " WHERE customer_id = %s AND run_id IN (SELECT id FROM scoring_runs) ORDER BY run_id",
        (customer_id,)).fetchall()
    transitions = conn.execute(
        "SELECT run_id, from_tier, to_tier FROM tier_transitions WHERE customer_id = %s"
        " ORDER BY run_id", (customer_id,)).fetchall()
    events = conn.execute(
        "SELECT id, type, run_id, created_at, data FROM events WHERE customer_id = %s"
        " ORDER BY id", (customer_id,)).fetchall()
    return {
        "customer_id": customer_id,
        "customer_ref": customer_ref(settings, customer_id),
        "profile": None if profile is None else {
            "email": profile[1], "phone": profile[2], "name": profile[3],
            "created_at": profile[4].isoformat(), "updated_at": profile[5].isoformat()},
        "identities": [{"channel": c, "external_id": e, "linked_at": t.isoformat()}
                       for c, e, t in identities],
        "orders": [{"channel": r[0], "order_id": r[1], "ordered_at": r[2].isoformat(),
                    "amount": r[3], "currency": r[4], "status": r[5],
                    "received_at": r[6].isoformat(), "updated_at": r[7].isoformat()}
                   for r in orders],
        "scores": [r[0] for r in scores],
        "tier_history": [{"run_id": r[0], "from_tier": r[1], "to_tier": r[2]}
                         for r in transitions],
        "events": [{"id": str(r[0]), "type": r[1], "run_id": r[2],
                    "occurred_at": r[3].isoformat(), "data": r[4]} for r in events],
    }
