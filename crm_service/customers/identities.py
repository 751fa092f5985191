"""One person across channels: channel accounts, linking rules, merge and unmerge.

**Accounts.** Each marketplace knows a buyer by its own id: ``(channel, buyer_id)``, stored in
``customer_identities``. An order or profile may carry that instead of the brand's
``customer_id``: a known account gives its customer; an unknown one creates a customer whose id is
derived from the account (:func:`generated_id`: a keyed hash, so it is stable, the same on every
machine with the same server key, and reveals nothing of the account id).

**Aliases.** A merge keeps the merged customers as aliases of the survivor
(``customers.merged_into``): every lookup of an alias answers with the survivor and says so; later
orders and profiles sent for an alias land on the survivor.

**Linking rules.** Customers who share a normalised phone (E.164) or email are one person
(``CRM_LINK_RULES``, default ``phone,email``), merged into the oldest of them, unless two of them
each hold an account on the same channel with different ids (usually two people sharing a phone):
such pairs go to a review list (``identities candidates``) instead, unless
``CRM_LINK_SAME_CHANNEL=allow``. A merge that was undone is never redone by a rule. Rules run
right after each profile batch or profile import, and over the whole base with
``crm-service identities resolve``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import phonenumbers

from crm_service.errors import ConflictError, NotFoundError, ValidationError
from crm_service.platform import secretbox
from crm_service.platform.config import Settings
from crm_service.privacy import refs
from crm_service.storage import identities as store

if TYPE_CHECKING:
    import psycopg

GENERATED_PREFIX = "cx-"
_PURPOSE = b"crm-identity"
MAX_MERGE = 50  # customers merged in one request
LINK_RULES = ("phone", "email")


def identity_key(settings: Settings) -> bytes:
    """The key generated ids are derived with (from the server key)."""
    return hashlib.blake2b(secretbox.server_key(settings), digest_size=32,
                           person=b"crm-identity-key").digest()


def generated_id(key: bytes, channel: str, buyer_id: str) -> str:
    """The customer id of a new channel account: ``cx-`` and 20 hex digits of a keyed hash.

    80 bits: two of ten million accounts share an id with probability 4e-11. Short on
    purpose: the id is in every order row and three indexes (hex: base32 cost four times as
    much per id, on the import's critical path).
    """
    return IdMaker(key)(channel, buyer_id)


class IdMaker:
    """:func:`generated_id` for many accounts: the keyed hash state is set up once."""

    def __init__(self, key: bytes) -> None:
        self._base = hashlib.blake2b(key=key, digest_size=10, person=_PURPOSE)

    def __call__(self, channel: str, buyer_id: str) -> str:
        """The generated customer id of the account."""
        h = self._base.copy()
        h.update(f"{channel}\x1f{buyer_id}".encode())
        return GENERATED_PREFIX + h.hexdigest()


def survivor_of(conn: psycopg.Connection, customer_id: str) -> str | None:
    """The survivor ``customer_id`` was merged into, or None when it is not an alias."""
    return store.survivors_of(conn, [customer_id]).get(customer_id)


def resolve_aliases(conn: psycopg.Connection, ids: Iterable[str]) -> dict[str, str]:
    """``alias -> survivor`` for those of ``ids`` that are aliases."""
    return store.survivors_of(conn, ids)


# ---- merge and unmerge --------------------------------------------------------------------

def merge(conn: psycopg.Connection, settings: Settings, survivor: str, from_ids: Sequence[str],
          *, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Merge ``from_ids`` into ``survivor`` in one transaction; the merge's record.

    Raises NotFoundError for an unknown id, ConflictError when an id is already merged (or is
    the survivor), ValidationError for an empty or oversized list. Two merges of overlapping
    customers run one after the other: the second sees the first and fails with ConflictError.
    """
    wanted = list(dict.fromkeys(i for i in from_ids))
    if not wanted:
        raise ValidationError("from: give at least one customer id to merge")
    if len(wanted) > MAX_MERGE:
        raise ValidationError(f"from: at most {MAX_MERGE} customers in one merge")
    if survivor in wanted:
        raise ValidationError("from: a customer cannot be merged into itself")
    with conn.transaction():
        store.lock_for_merging(conn)
        held = store.customers_held(conn, [survivor, *wanted])
        missing = [i for i in [survivor, *wanted] if i not in held]
        if missing:
            raise NotFoundError("no customer " + ", ".join(repr(i) for i in missing))
        if held[survivor].merged_into is not None:
            raise ConflictError(f"customer {survivor!r} was merged into "
                                f"{held[survivor].merged_into!r}; merge into that one")
        merged = [i for i in wanted if held[i].merged_into is not None]
        if merged:
            raise ConflictError("already merged: " + ", ".join(
                f"{i!r} into {held[i].merged_into!r}" for i in merged))
        done = store.apply_merges(conn, [(survivor, wanted)], actor=actor, reason=reason,
                                  ref_params=refs.ref_sql_params(settings))[0]
    return _merge_answer(conn, done.merge_id)


def _merge_answer(conn: psycopg.Connection, merge_id: int) -> dict[str, Any]:
    record = store.merge_record(conn, merge_id)
    assert record is not None
    orders, identities = store.moved_counts(conn, merge_id)
    return {"merge_id": str(record.id), "customer_id": record.survivor_id,
            "merged_ids": record.merged_ids, "actor": record.actor, "reason": record.reason,
            "merged_at": record.created_at.isoformat(),
            "undone_at": record.undone_at.isoformat() if record.undone_at else None,
            "moved": {"orders": orders, "identities": identities,
                      "aliases": sorted(record.details.get("aliases") or {}),
                      "contact_fields": sorted(record.details.get("filled") or {})}}


def unmerge(conn: psycopg.Connection, settings: Settings, survivor: str,
            merge_id: int | None = None, *, actor: str) -> dict[str, Any]:
    """Undo a merge into ``survivor`` (default: its newest that is not undone).

    ConflictError when a later merge depends on it (the survivor was merged on) or it is undone
    already. Orders sent for a merged id after the merge stay with the survivor.
    """
    with conn.transaction():
        store.lock_for_merging(conn)
        if merge_id is None:
            merge_id = store.latest_open_merge(conn, survivor)
            if merge_id is None:
                raise NotFoundError(f"no merge into {survivor!r} to undo")
        record = store.merge_record(conn, merge_id, lock=True)
        if record is None or record.survivor_id != survivor:
            raise NotFoundError(f"no merge {merge_id} into {survivor!r}")
        if record.undone_at is not None:
            raise ConflictError(f"merge {merge_id} was undone at {record.undone_at.isoformat()}")
        later = store.later_dependents(conn, record)
        if later:
            raise ConflictError(f"merge {merge_id} cannot be undone while later merge(s) "
                                f"{', '.join(map(str, later))} depend on it; undo those first")
        orders, identities, event_id = store.undo_merge(
            conn, record, actor=actor, ref_params=refs.ref_sql_params(settings))
    answer = _merge_answer(conn, merge_id)
    answer["restored"] = {"orders": orders, "identities": identities}
    answer["event_id"] = str(event_id)
    return answer


def history(conn: psycopg.Connection, customer_id: str) -> list[dict[str, Any]]:
    """The merges naming the customer, newest first."""
    return [{"merge_id": str(r.id), "customer_id": r.survivor_id, "merged_ids": r.merged_ids,
             "actor": r.actor, "reason": r.reason, "merged_at": r.created_at.isoformat(),
             "undone_at": r.undone_at.isoformat() if r.undone_at else None}
            for r in store.merges_of(conn, customer_id)]


# ---- linking rules ------------------------------------------------------------------------

@dataclass
class Linked:
    """What one pass of the linking rules did."""

    groups: int = 0  # customers sharing a phone or email, in connected groups
    merges: int = 0
    merged_customers: int = 0
    candidates: int = 0  # new pairs for review

    def as_dict(self) -> dict[str, int]:
        """JSON-ready counts."""
        return dict(self.__dict__)


MAX_GROUP = 20  # customers sharing one value beyond which a rule links none of them


def _linkable(rule: str, value: str) -> bool:
    """Whether a shared value may link people: an email, or a phone valid in E.164.

    A placeholder such as ``000-000-0000`` or ``12345`` is shared by strangers.
    """
    if rule != "phone":
        return True
    if not value.startswith("+"):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False


def link(conn: psycopg.Connection, settings: Settings, among: Sequence[str] | None = None
         ) -> Linked:
    """Apply the linking rules in the open transaction (whole base when ``among`` is None).

    Takes the writers' lock exclusively; see the module docstring for the rules. Customers
    sharing a value are linked one step at a time from the oldest of them: a customer joins
    when it shares a value with someone already joined, holds no other account on a channel
    where the joined ones hold one, and was never unmerged from any of them (a pair that a
    person took apart stays apart, even through a third customer). A value shared by more than
    :data:`MAX_GROUP` customers links none of them (a shop's own number, a placeholder); the
    first of them go to review.
    """
    out = Linked()
    rules = settings.link_rules
    if not rules or (among is not None and not among):
        return out
    if among is not None and not store.shared_contacts(conn, rules, among):
        return out  # the common case, decided without waiting for the writers' lock
    store.lock_for_merging(conn)
    review: list[tuple[str, str, str, str]] = []
    shared = [g for g in store.shared_contacts(conn, rules, among) if _linkable(g.rule, g.value)]
    if not shared:
        return out
    ages = store.created_order(conn, list({c for g in shared for c in g.customer_ids}))
    groups = []
    for group in shared:
        people = sorted(group.customer_ids, key=lambda c: ages[c])
        if len(people) > MAX_GROUP:
            review += [(people[0], other, group.rule, "*") for other in people[1:MAX_GROUP]]
            continue
        groups.append(group)
    member_of: dict[str, list[int]] = {}
    for g, group in enumerate(groups):
        for cid in group.customer_ids:
            member_of.setdefault(cid, []).append(g)
    accounts = store.channel_accounts(conn, list(member_of))
    blocked: dict[str, set[str]] = {}
    for pair in store.undone_pairs(conn, list(member_of)):
        a, b = tuple(pair)
        blocked.setdefault(a, set()).add(b)
        blocked.setdefault(b, set()).add(a)
    allow_same_channel = settings.link_same_channel
    plans: dict[str, list[tuple[str, list[str]]]] = {}  # actor -> (survivor, merged)
    done: set[str] = set()
    for survivor in sorted(member_of, key=lambda c: ages[c]):
        if survivor in done:
            continue
        done.add(survivor)
        joined, taken, rules_used = {survivor}, [], set()
        held = {ch: set(ids) for ch, ids in accounts.get(survivor, {}).items()}
        frontier = [survivor]
        while frontier:
            for g in member_of[frontier.pop()]:
                group = groups[g]
                for cid in group.customer_ids:
                    if cid in joined or cid in done:
                        continue
                    if blocked.get(cid, set()) & joined:
                        continue
                    clash = None if allow_same_channel else next(
                        (ch for ch, own in accounts.get(cid, {}).items()
                         if held.get(ch) and not own <= held[ch]), None)
                    if clash is not None:
                        review.append((survivor, cid, group.rule, clash))
                        continue
                    for ch, own in accounts.get(cid, {}).items():
                        held.setdefault(ch, set()).update(own)
                    joined.add(cid)
                    done.add(cid)
                    taken.append(cid)
                    rules_used.add(group.rule)
                    frontier.append(cid)
        out.groups += 1
        if taken:
            actor = "rule:" + "+".join(r for r in LINK_RULES if r in rules_used)
            plans.setdefault(actor, []).append((survivor, taken))
    out.candidates = store.add_candidates(conn, review)
    ref_params = refs.ref_sql_params(settings)
    for actor, batch in plans.items():
        store.apply_merges(conn, batch, actor=actor,
                           reason="shared " + actor.removeprefix("rule:").replace("+", " and "),
                           ref_params=ref_params)
        out.merges += len(batch)
        out.merged_customers += sum(len(t) for _, t in batch)
    return out


def link_after_ingest(conn: psycopg.Connection, settings: Settings, ids: Sequence[str]
                      ) -> Linked:
    """The linking rules for customers a committed batch touched, in their own transaction."""
    if not settings.link_rules or not ids:
        return Linked()
    with conn.transaction():
        # Never hold the batch's answer for long behind a bulk import: give up after a few
        # seconds (LockNotAvailable); `identities resolve` links them later.
        store.limit_lock_wait(conn, seconds=3)
        return link(conn, settings, among=ids)


def review_list(conn: psycopg.Connection, limit: int = 100,
                customer_id: str | None = None) -> list[dict[str, Any]]:
    """Pairs the rules matched but left for a person to decide."""
    return [{**c, "found_at": c["found_at"].isoformat()}
            for c in store.candidates(conn, limit, customer_id)]


def ensure_phone_scheme(conn: psycopg.Connection, settings: Settings) -> int | None:
    """Rewrite stored phones in E.164 if they were written another way (or another country).

    Runs after the migrations (``db upgrade``, ``serve``, ``demo``): a base from before E.164,
    or one whose ``CRM_PHONE_COUNTRY_CODE`` changed, is normalised once, under the writers'
    lock. Returns the rows changed, or None when nothing had to be done.
    """
    from crm_service.customers.rules import PHONE_SCHEME, normalize_phone
    from crm_service.storage.locks import lock_exclusive

    wanted = (settings.phone_country_code, PHONE_SCHEME)
    if store.phone_scheme(conn) == wanted:
        return None
    with conn.transaction():
        lock_exclusive(conn)
        if store.phone_scheme(conn) == wanted:
            return None
        return store.renormalize_phones(conn, normalize_phone, *wanted)
