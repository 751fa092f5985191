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

from typing import TYPE_CHECKING, Any

from crm_service.errors import NotFoundError
from crm_service.platform import secretbox
from crm_service.platform.config import Settings
from crm_service.privacy.refs import PURPOSE, customer_ref
from crm_service.storage import erasure as store

if TYPE_CHECKING:
    import psycopg

def suppressed(conn: psycopg.Connection, settings: Settings, ids: list[str]) -> set[str]:
    """Which of ``ids`` were erased (their ingestion is suppressed)."""
    if not ids or not store.any_erased(conn):
        return set()
    key = secretbox.server_key(settings)
    digests = {secretbox.keyed_digest(key, PURPOSE, i): i for i in set(ids)}
    return {digests[d] for d in store.erased_among(conn, list(digests))}


ACCOUNT_PURPOSE = "erased-account"


def account_digest(key: bytes, channel: str, external_id: str) -> bytes:
    """The suppression-list entry of a channel account (a keyed hash, as for ids)."""
    return secretbox.keyed_digest(key, ACCOUNT_PURPOSE, f"{channel}/{external_id}")


def suppressed_accounts(conn: psycopg.Connection, settings: Settings,
                        accounts: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the (channel, external id) accounts belonged to an erased customer."""
    if not accounts or not store.any_erased(conn):
        return set()
    key = secretbox.server_key(settings)
    digests = {account_digest(key, c, e): (c, e) for c, e in set(accounts)}
    return {digests[d] for d in store.erased_among(conn, list(digests))}


def any_erased(conn: psycopg.Connection) -> bool:
    """True once any customer has been erased (ingestion checks only then)."""
    return store.any_erased(conn)


def erase(conn: psycopg.Connection, settings: Settings, customer_id: str) -> dict[str, Any]:
    """Erase a customer in one transaction; NotFoundError if nothing is held about them.

    The person is erased: an alias (a merged id) erases its survivor, and a survivor takes its
    aliases with it (each id on the suppression list, each with its ``customer.erased``).
    Returns the counts of what was removed, the ``customer_ref`` and, for an alias,
    ``merged_into``; ``aliases`` lists the refs of the aliases erased with it.
    """
    from crm_service.storage import identities as id_store

    key = secretbox.server_key(settings)
    with conn.transaction():
        store.lock_exclusive(conn)
        survivor = id_store.survivors_of(conn, [customer_id]).get(customer_id)
        target = survivor or customer_id
        alias_ids = [a["customer_id"] for a in id_store.aliases(conn, target)]
        # Their channel accounts go on the list too: an order later sent by one of them must
        # not bring the person back as a new customer.
        accounts = id_store.accounts_of(conn, [target, *alias_ids])
        alias_refs = []
        for alias in alias_ids:  # first: their rows point at the survivor's
            digest = secretbox.keyed_digest(key, PURPOSE, alias)
            store.delete_customer(conn, alias, digest)
            alias_refs.append(digest.hex())
        digest = secretbox.keyed_digest(key, PURPOSE, target)
        erased = store.delete_customer(conn, target, digest)
        if erased is None:
            raise NotFoundError(f"no customer {customer_id!r}")
        store.suppress(conn, [account_digest(key, c, e) for c, e in accounts])
    out = {"customer_ref": digest.hex(), "removed": erased.removed,
           "event_id": str(erased.event_id)}
    if survivor is not None:
        out["merged_into"] = survivor
    if alias_refs:
        out["aliases"] = alias_refs
    return out


def export(conn: psycopg.Connection, settings: Settings, customer_id: str) -> dict[str, Any]:
    """Everything held about a customer, as JSON-ready data (GDPR Art. 20).

    An alias is answered with its survivor's data (``merged_into``); the survivor's export lists
    its aliases and the merges naming it.
    """
    from crm_service.customers import identities
    from crm_service.storage import identities as id_store

    survivor = id_store.survivors_of(conn, [customer_id]).get(customer_id)
    asked, customer_id = customer_id, survivor or customer_id
    held = store.held_data(conn, customer_id)
    if held.profile is None and not held.orders:
        raise NotFoundError(f"no customer {asked!r}")
    p = held.profile
    return {
        "customer_id": customer_id,
        "merged_into": survivor,
        "aliases": [{"customer_id": a["customer_id"], "merge_id": a["merge_id"],
                     "merged_at": a["merged_at"].isoformat() if a["merged_at"] else None,
                     "profile": _profile(store.held_data(conn, a["customer_id"]).profile)}
                    for a in id_store.aliases(conn, customer_id)],
        "merges": identities.history(conn, customer_id),
        "customer_ref": customer_ref(settings, customer_id),
        "profile": _profile(p),
        "identities": [{"channel": i.channel, "external_id": i.external_id,
                        "linked_at": i.linked_at.isoformat()} for i in held.identities],
        "orders": [{"channel": o.channel, "order_id": o.order_id,
                    "ordered_at": o.ordered_at.isoformat(), "amount": o.amount,
                    "currency": o.currency, "status": o.status,
                    "received_at": o.received_at.isoformat(),
                    "updated_at": o.updated_at.isoformat()} for o in held.orders],
        "scores": held.scores,
        "tier_history": [{"run_id": t.run_id, "from_tier": t.from_tier, "to_tier": t.to_tier}
                         for t in held.transitions],
        "events": [{"id": str(e.id), "type": e.type, "run_id": e.run_id,
                    "occurred_at": e.occurred_at.isoformat(), "data": e.data}
                   for e in held.events],
    }


def _profile(p: Any) -> dict[str, Any] | None:
    return None if p is None else {
        "email": p.email, "phone": p.phone, "name": p.name,
        "created_at": p.created_at.isoformat(), "updated_at": p.updated_at.isoformat()}
