"""Customer lookups (SQL): one customer's live scores, profile and history, cards, search.

Each lookup is one statement, so scores, tier history and the live run always come from the same
snapshot, and a lookup is one round trip. :mod:`crm_service.customers.profiles` adds the
provisional maths and the search rules on top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import class_row

from crm_service.customers import cards
from crm_service.storage.score_reads import SCORE_COLUMNS

HISTORY = 5  # tier transitions shown

# Pieces of both kinds of lookup below, for the customer ``{c}`` in the live run ``r``. Lists are
# array_to_json(array_agg(...)): compact, where json_agg would put line breaks between elements.
# Stale: an order of the customer changed after the run started, or falls after its as_of, or a
# merge into them was undone since (the orders it gave back no longer count).
_STALE = """(EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = {c}
               AND (o.updated_at > r.started_at
                    OR (o.status = 'paid'
                        AND o.ordered_at >= (r.as_of + 1)::timestamp AT TIME ZONE r.timezone)))
        OR EXISTS (SELECT 1 FROM customer_merges um WHERE um.survivor_id = {c}
                   AND um.undone_at > r.started_at))"""
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

# Timestamps as Python's isoformat() writes them (the Flask view's format): sessions are UTC.
_ISO_UTC = ("to_char({t} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
            " || CASE WHEN date_part('microseconds', {t})::int %% 1000000 = 0 THEN ''"
            " ELSE to_char({t} AT TIME ZONE 'UTC', '.US') END || '+00:00'")

_RECENT_ORDERS = """(SELECT coalesce(array_to_json(array_agg(ro ORDER BY ro.ordered_at DESC,
            ro.channel, ro.order_id)), '[]') FROM (
            SELECT o.channel, o.order_id, {iso} AS ordered_at, o.amount::float8 AS amount,
                   o.status
            FROM orders o WHERE o.customer_id = {{c}}
            ORDER BY o.ordered_at DESC, o.channel, o.order_id LIMIT {n}) ro)""".format(
    iso=_ISO_UTC.format(t="o.ordered_at"), n=cards.RECENT_ORDERS)
_ALIASES = """(SELECT coalesce(array_to_json(array_agg(al ORDER BY al.customer_id)), '[]') FROM (
            SELECT a.customer_id, a.merge_id::text AS merge_id FROM customers a
            WHERE a.merged_into = {c}) al)"""

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
       {identities}, {channels}, {orders}, {aliases}
""".format(identities=_IDENTITIES.format(c="%(c)s"), channels=_CHANNELS.format(c="%(c)s"),
           orders=_RECENT_ORDERS.format(c="%(c)s"), aliases=_ALIASES.format(c="%(c)s"))

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
  AND NOT EXISTS (SELECT 1 FROM customers al WHERE al.customer_id = c.id
                  AND al.merged_into IS NOT NULL)
""".format(stale=_STALE.format(c="c.id"))

def _select(card: tuple[cards.Field, ...], exprs: dict[str, str]) -> str:
    """The select list of a card: each field of the card's definition, by its expression here."""
    missing = [f.name for f in card if f.name not in exprs]
    extra = set(exprs) - set(cards.names(card))
    if missing or extra:
        raise RuntimeError(f"the SQL card and its definition disagree: no expression for "
                           f"{missing}, expressions for no field {sorted(extra)}")
    return ", ".join(f"{exprs[f.name]} AS {f.name}" for f in card)


def _cards_statement(card: tuple[cards.Field, ...], exprs: dict[str, str], join: str) -> str:
    """The statement building ``card`` as JSON text for each customer id asked for."""
    return ("SELECT c.id, (SELECT row_to_json(card) FROM (SELECT " + _select(card, exprs)
            + ") card)::text" + _CARD_FROM.format(join=join))


_TIER_SQL = {
    "customer_id": "c.id", "run_id": "r.id", "as_of": "r.as_of", "provisional": "false",
    "provisional_as_of": "NULL::date",
    **{name: f"s.{name}" for name in (
        "tier", "tier_since", "value_segment", "rfm_segment", "recommended_action",
        "churn_risk", "churn_probability", "clv_12m", "p_alive", "p_alive_note")},
    "recent_transitions": _TRANSITIONS.format(c="c.id"),
    "merged_into": "NULL::text",
}

_TIER_CARDS = _cards_statement(cards.TIER_CARD, _TIER_SQL, join="")

SCORES = tuple(c for c in SCORE_COLUMNS if c != "customer_id")

_PROFILE_SQL = {
    "customer_id": "c.id", "created_at": "cu.created_at", "updated_at": "cu.updated_at",
    "contact": "CASE WHEN %(pii)s THEN (SELECT row_to_json(ct) FROM (SELECT "
               + ", ".join(f"cu.{f.name}" for f in cards.CONTACT) + ") ct) END",
    "identities": f"CASE WHEN %(pii)s THEN {_IDENTITIES.format(c='c.id')} END",
    "orders_by_channel": _CHANNELS.format(c="c.id"),
    "run_id": "r.id", "as_of": "r.as_of", "scored_at": _ISO_UTC.format(t="r.finished_at"),
    "churn_horizon_days": "r.churn_horizon_days", "provisional": "false",
    **{name: f"s.{name}" for name in (
        "tier", "tier_since", "value_segment", "rfm_segment", "recommended_action")},
    # numeric columns as float8, as the Flask view's jsonable() gives them
    "scores": "(SELECT row_to_json(sc) FROM (SELECT " + ", ".join(
        f"s.{c}::float8 AS {c}" if c in ("monetary_value", "historic_spend") else f"s.{c}"
        for c in SCORES) + ") sc)",
    "recent_transitions": _TRANSITIONS.format(c="c.id"),
    "recent_orders": _RECENT_ORDERS.format(c="c.id"),
    "aliases": _ALIASES.format(c="c.id"),
    "merged_into": "NULL::text",
}

_PROFILE_CARDS = _cards_statement(cards.PROFILE_CARD, _PROFILE_SQL,
                                  join="JOIN customers cu ON cu.customer_id = c.id")

# Without a live run the profile still answers (scores null).
_PROFILE_ONLY = "SELECT NULL, NULL, NULL, NULL, false, {nulls}, '[]'::json, false {extra}"

_OCCASIONS = """
SELECT (ordered_at AT TIME ZONE %(tz)s)::date AS day, sum(amount)::float8
FROM orders WHERE customer_id = %(c)s AND status = 'paid'
GROUP BY day ORDER BY day
"""


@dataclass(frozen=True)
class LiveLookup:
    """One customer in the live run: the run, their scores, tier changes and profile."""

    run_id: int | None
    as_of: date | None
    scored_at: datetime | None
    churn_horizon_days: int | None
    scores: dict[str, Any] | None  # None: not scored in the live run
    transitions: list[dict[str, Any]]
    stale: bool  # an order changed after the run started, or falls after its as_of
    customer: dict[str, Any] | None = None  # with the profile only
    identities: list[dict[str, Any]] | None = None
    orders_by_channel: list[dict[str, Any]] | None = None
    recent_orders: list[dict[str, Any]] | None = None
    aliases: list[dict[str, Any]] | None = None


def live_lookup(conn: psycopg.Connection, customer_id: str, *,
                profile: bool = False) -> LiveLookup | None:
    """The customer in the live run; None when no run is live.

    With ``profile``, the profile comes back without scores when no run is live.
    """
    cols = ", ".join(f"s.{c}" for c in SCORES)
    extra = _PROFILE_EXTRA if profile else ""
    params = {"c": customer_id, "n": HISTORY}
    row = conn.execute(_LOOKUP.format(cols=cols, extra=extra), params).fetchone()
    if row is None:
        if not profile:
            return None
        nulls = ", ".join("NULL" for _ in SCORES)
        row = conn.execute(_PROFILE_ONLY.format(nulls=nulls, extra=extra), params).fetchone()
        assert row is not None  # a SELECT without FROM has one row
    n = len(SCORES)
    found = LiveLookup(
        run_id=row[0], as_of=row[1], scored_at=row[2], churn_horizon_days=row[3],
        scores=dict(zip(SCORES, row[5:5 + n], strict=True)) if row[4] else None,
        transitions=row[5 + n], stale=bool(row[6 + n]))
    if profile:
        customer, identities, channels, orders, aliases = row[7 + n:]
        return LiveLookup(**{**found.__dict__, "customer": customer, "identities": identities,
                             "orders_by_channel": channels, "recent_orders": orders,
                             "aliases": aliases})
    return found


def survivor(conn: psycopg.Connection, customer_id: str) -> str | None:
    """The customer ``customer_id`` was merged into, or None when it is not an alias."""
    row = conn.execute("SELECT merged_into FROM customers WHERE customer_id = %s"
                       " AND merged_into IS NOT NULL", (customer_id,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class RunModels:
    """What a provisional answer needs from a run's record."""

    models: dict[str, Any]
    cutoffs: dict[str, Any] | None
    timezone: str
    churn_horizon_days: int
    policy: dict[str, Any] | None


def run_models(conn: psycopg.Connection, run_id: int) -> RunModels | None:
    """The run's fitted models, rank cut-offs, time zone, horizon and tier policy."""
    with conn.cursor(row_factory=class_row(RunModels)) as cur:
        return cur.execute(
            "SELECT r.models, r.counts -> 'cutoffs' AS cutoffs, r.timezone,"
            " r.churn_horizon_days, p.policy FROM scoring_runs r"
            " LEFT JOIN tier_policies p ON p.version = r.tier_policy_version"
            " WHERE r.id = %s", (run_id,)).fetchone()


def occasion_days(conn: psycopg.Connection, customer_id: str,
                  timezone: str) -> list[tuple[date, float]]:
    """The customer's purchase occasions (day in ``timezone``, amount), oldest first."""
    return conn.execute(_OCCASIONS, {"tz": timezone, "c": customer_id}).fetchall()


class StatementWatch(Protocol):
    """Watches one statement at a time on a connection's socket (the lane's watchdog)."""

    def arm(self, fd: int) -> None:
        """A statement begins on the socket ``fd``."""

    def disarm(self) -> bool:
        """The statement is over; True if the watch cut its connection."""


def watched_cards(pool: Any, asks: list[tuple[list[str], bool, bool]], watch: StatementWatch,
                  *, stale_seconds: float) -> list[dict[str, bytes]]:
    """:func:`card_json` for each ``(ids, profile, contact)`` ask, on one pooled connection.

    Each statement is watched by ``watch`` (which may cut the connection's socket when it
    takes too long; the connection is then closed, so the pool does not hand it out again).
    A connection that breaks within ``stale_seconds`` (left over from before a database
    restart) is retried once on another; other errors are raised.
    """
    for attempt in (1, 2):
        began = time.monotonic()
        try:
            with pool.connection() as conn:
                answers = []
                for ids, profile, contact in asks:
                    watch.arm(conn.pgconn.socket)
                    try:
                        answers.append(card_json(conn, ids, profile=profile, contact=contact))
                    finally:
                        if watch.disarm():
                            conn.close()
                return answers
        except psycopg.OperationalError:
            if attempt == 2 or time.monotonic() - began > stale_seconds:
                raise
    raise AssertionError("unreachable")


def card_json(conn: psycopg.Connection, customer_ids: list[str], *, profile: bool,
              contact: bool) -> dict[str, bytes]:
    """The ``/tier`` (or profile) answers PostgreSQL can build alone, as JSON, by customer."""
    sql = _PROFILE_CARDS if profile else _TIER_CARDS
    rows = conn.execute(sql, {"ids": customer_ids, "n": HISTORY, "pii": contact}).fetchall()
    return {customer_id: card.encode() for customer_id, card in rows}


@dataclass(frozen=True)
class Match:
    """A customer found by a search, with their live tier (None when not scored).

    ``merged_ids``: the aliases (merged customers) through which the survivor was found.
    """

    customer_id: str
    email: str | None
    phone: str | None
    name: str | None
    tier: str | None
    value_segment: str | None
    recommended_action: str | None
    merged_ids: list[str] | None = None
    matched_by: list[str] | None = None


# The hits (customer_id, how) of a search, each alias answered by its survivor, at most %(n)s.
_FOUND = """
found AS (
    SELECT coalesce(c.merged_into, h.customer_id) AS customer_id,
           array_agg(DISTINCT h.how ORDER BY h.how) AS how,
           array_agg(DISTINCT h.customer_id ORDER BY h.customer_id)
               FILTER (WHERE c.merged_into IS NOT NULL) AS merged_ids
    FROM hits h LEFT JOIN customers c ON c.customer_id = h.customer_id
    GROUP BY 1 ORDER BY 1 LIMIT %(n)s)
SELECT c.customer_id, c.email, c.phone, c.name, s.tier, s.value_segment,
       s.recommended_action, f.merged_ids, f.how AS matched_by FROM found f
JOIN customers c USING (customer_id)
LEFT JOIN scoring_state st ON true
LEFT JOIN customer_scores s ON s.run_id = st.active_run_id AND s.customer_id = c.customer_id
ORDER BY c.customer_id
"""

_WHERE = {"email": "SELECT customer_id, 'email' AS how FROM customers"
                   " WHERE email_normalized = %(v)s",
          "phones": "SELECT customer_id, 'phone' AS how FROM customers"
                    " WHERE phone_normalized = ANY(%(v)s)",
          "identity": "SELECT customer_id, 'channel_identity' AS how FROM customer_identities"
                      " WHERE channel = %(ch)s AND external_id = %(v)s"}

# An order id on any channel: one primary-key probe per channel, the channels found by a skip
# scan of the primary key (a handful of probes, however many orders there are).
_ORDER_ON_ANY_CHANNEL = """
SELECT o.customer_id, 'order_id' AS how FROM (
    WITH RECURSIVE ch AS (
        SELECT min(channel) AS c FROM orders
        UNION ALL
        SELECT (SELECT min(channel) FROM orders WHERE channel > ch.c) FROM ch
        WHERE ch.c IS NOT NULL)
    SELECT c FROM ch WHERE c IS NOT NULL) chans
JOIN orders o ON o.channel = chans.c AND o.order_id = %(q)s
"""


def matches(conn: psycopg.Connection, by: str, value: Any, limit: int, *,
            channel: str | None = None) -> list[Match]:
    """Customers matching ``value`` by ``email``, ``phones`` or ``identity``, by customer id.

    ``email``: the normalised email; ``phones``: any of the phone forms; ``identity``: the
    external id on ``channel``. Aliases are answered by their survivor.
    """
    with conn.cursor(row_factory=class_row(Match)) as cur:
        return cur.execute("WITH hits AS (" + _WHERE[by] + ")," + _FOUND,
                           {"v": value, "ch": channel, "n": limit}).fetchall()


def find_matches(conn: psycopg.Connection, text: str, *, email: str | None,
                 phones: list[str] | None, identity: tuple[str, str] | None,
                 limit: int) -> list[Match]:
    """Customers matching ``text`` as an id, external id or order id, or any given form.

    One statement; ``matched_by`` says how each matched; by customer id. ``identity`` (a
    ``channel/id`` pair) is tried as a channel account and as an order on that channel.
    """
    arms = ["SELECT customer_id, 'customer_id' AS how FROM customers WHERE customer_id = %(q)s",
            "SELECT customer_id, 'external_id' FROM customer_identities WHERE external_id = %(q)s",
            _ORDER_ON_ANY_CHANNEL]
    params: dict[str, Any] = {"q": text, "n": limit}
    if email is not None:
        arms.append(_WHERE["email"].replace("%(v)s", "%(e)s"))
        params["e"] = email
    if phones is not None:
        arms.append(_WHERE["phones"].replace("%(v)s", "%(p)s"))
        params["p"] = phones
    if identity is not None:
        arms.append("SELECT customer_id, 'channel_identity' FROM customer_identities"
                    " WHERE channel = %(ch)s AND external_id = %(x)s")
        arms.append("SELECT customer_id, 'order_id' FROM orders"
                    " WHERE channel = %(ch)s AND order_id = %(x)s")
        params.update(ch=identity[0], x=identity[1])
    with conn.cursor(row_factory=class_row(Match)) as cur:
        return cur.execute(
            "WITH hits AS (" + " UNION ALL ".join(f"({arm} LIMIT %(n)s)" for arm in arms) + "),"
            + _FOUND, params).fetchall()
