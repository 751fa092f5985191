"""The fast lane for ``GET /v1/customers/{id}/tier`` and ``GET /v1/customers/{id}``.

Agents and campaign tools call these two far more than anything else, and most of their cost
was not the lookup but what surrounds it: Flask's request machinery, and one PostgreSQL round
trip per request (each a pair of context switches on a busy machine). :class:`LookupLane` wraps
the Flask app's ``wsgi_app`` and answers the common case itself:

- a ``GET`` of ``/v1/customers/<id>/tier`` or ``/v1/customers/<id>`` with a bearer key that
  this process verified recently (:class:`~crm_service.access.api_keys.VerifiedKeys`) or verifies
  now, holding the view's scope (``scores:read``; for the profile also ``customers:read``,
  which adds contact details), within its rate limit;
- for a customer whose live-run answer PostgreSQL can build alone as JSON
  (:func:`crm_service.customers.profiles.cards`): scored in the live run, orders unchanged since.

Everything else, including every error, goes to the Flask view, which gives the same answers it
always did (401/403/404/422/429/503 as problem+json, provisional tiers). The lane changes how
fast a request is answered, not what it says: ``tests/test_fastpath.py`` checks that both lanes
give equal JSON values, status and headers. The bytes may differ where JSON does not care: key
order and spacing, non-ASCII text written as UTF-8 rather than escaped, and a whole
number of a float field written ``1`` rather than ``1.0``.

**Batching.** :meth:`LookupLane.prefetch` takes the requests a server received together and looks
all their customers up in one statement per kind, leaving each answer in its request's environ.
The keep-alive worker (:class:`api.serving.server.ProblemKeepAliveWorker`) calls it on its
event loop for the requests :meth:`LookupLane.inline` accepts, answers those with an answer in
hand through :meth:`LookupLane.answer`, and gives the rest to its threads, where the whole app
runs. Other
servers never call it: each request is then looked up alone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from crm_service.customers import profiles
from crm_service.customers.ids import valid_customer_id
from crm_service.storage import lookups

if TYPE_CHECKING:
    from api.services import Services

log = logging.getLogger("crm.request")

PREFIX = "/v1/customers/"
SUFFIX = "/tier"
# The route templates the request log shows (never the customer id): Flask's rule strings, as
# the log writes them for the views.
ROUTES = {"tier": "/v1/customers/<customer_id:customer_id>/tier",
          "profile": "/v1/customers/<customer_id:customer_id>"}
BATCH_WAIT_SECONDS = 2.0  # a batch's connection is cut after this long (see _Watchdog)
DOWN_SECONDS = (1.0, 5.0)  # after failed batches: skip batching this long, doubling up to
STALE_SECONDS = 0.05  # a batch failing this fast met a dead connection: try another once
READ_SCORES, READ_CUSTOMERS = "scores:read", "customers:read"

# environ keys the lane leaves for the Flask app (not settable by clients: their headers
# arrive as HTTP_*).
CARD = "crm.card"  # the prefetched answer (bytes), or MISSING
KEY = "crm.key"  # the verified key the prefetch saw (so the answer needs no second check)
RATE_CHECKED = "crm.rate_limit_wait"  # the rate limiter was consulted: seconds to wait
MISSING = b""

StartResponse = Callable[..., Any]


@runtime_checkable
class BatchingLane(Protocol):
    """What a server that batches lookups needs of the app's lane (the app's ``wsgi_app``).

    A server calls :meth:`inline` for each parsed request, :meth:`prefetch` once for all the
    requests it accepted that arrived together, then :meth:`answer` for each; a None from
    ``answer`` means the full app must answer (in a thread: it may use the database).
    """

    def inline(self, environ: dict[str, Any]) -> bool:
        """Whether ``environ`` may take part in a batch."""

    def prefetch(self, environs: list[dict[str, Any]]) -> None:
        """Look the batch up together, leaving each answer in its environ."""

    def answer(self, environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes] | None:
        """The answer, or None (nothing started) when the full app must answer."""


class _Watchdog:
    """Cuts the lane's database connection when a statement takes longer than ``limit`` s.

    Server-side timeouts cannot end a wait on a database that no longer answers at all; this
    thread shuts the socket down, so the blocked read returns an error at once. It wakes eight
    times per ``limit`` and does nothing else; it starts with the first batch (in the serving
    process, after gunicorn's fork).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.since = 0.0
        self.sock: socket.socket | None = None  # our own duplicate of the connection's socket
        self.cut = False
        self.thread: threading.Thread | None = None

    def arm(self, fd: int) -> None:
        """A statement begins on the socket ``fd``.

        The socket is duplicated: a later reuse of the number by another socket cannot be cut.
        """
        sock = socket.socket(fileno=os.dup(fd))
        with self.lock:
            self.since, self.sock, self.cut = time.monotonic(), sock, False
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="crm-lane-watchdog",
                                               daemon=True)
                self.thread.start()

    def disarm(self) -> bool:
        """The statement is over; True if it was cut (then its connection must be closed)."""
        with self.lock:
            sock, cut = self.sock, self.cut
            self.since, self.sock, self.cut = 0.0, None, False
        if sock is not None:
            sock.close()
        return cut

    def _run(self) -> None:
        while True:
            time.sleep(self.limit / 8)
            with self.lock:
                if self.sock is None or time.monotonic() - self.since < self.limit:
                    continue
                self.since, self.cut = float("inf"), True
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            log.warning("a batched lookup took over %.0f s: its connection was cut",
                        self.limit)


def lookup_of(environ: dict[str, Any]) -> tuple[str, str] | None:
    """``("tier" | "profile", customer id)`` for a plain lookup, else None.

    Plain means what the Flask route would take as is: a ``GET``, no script name, a path that
    decodes as UTF-8, one non-empty segment that is a valid id
    (:func:`crm_service.customers.ids.valid_customer_id`) and not ``search``.
    """
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("SCRIPT_NAME"):
        return None
    raw = environ.get("PATH_INFO", "")
    if not raw.startswith(PREFIX):
        return None
    tier = raw.endswith(SUFFIX) and len(raw) > len(PREFIX) + len(SUFFIX)
    kind, end = ("tier", -len(SUFFIX)) if tier else ("profile", None)
    try:
        customer_id = raw[len(PREFIX):end].encode("latin-1").decode("utf-8")  # as Werkzeug
    except UnicodeError:
        return None

    if customer_id == "search" or not valid_customer_id(customer_id):
        return None
    return kind, customer_id


class LookupLane:
    """WSGI middleware: ``app.wsgi_app = LookupLane(services, app.wsgi_app, log_request)``."""

    def __init__(self, services: Services, fallback: Callable[..., Iterable[bytes]],
                 request_log: Callable[..., str]) -> None:
        self.services = services
        self.fallback = fallback
        self.request_log = request_log
        self.down_until = 0.0
        self.failures = 0
        self.watchdog = _Watchdog(BATCH_WAIT_SECONDS)

    def inline(self, environ: dict[str, Any]) -> bool:
        """Whether a server may run ``environ`` on its event loop, after :meth:`prefetch`.

        A lookup whose key this process verified recently: answering it needs no database
        work beyond the batch. (Without a prefetched answer it still needs a thread.)
        """
        found = lookup_of(environ)
        return found is not None and self._key(environ, found[0], verify=False) is not None

    def _key(self, environ: dict[str, Any], kind: str, *, verify: bool) -> Any:
        """The request's verified key holding the view's scope, or None (then Flask answers)."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        keys = self.services.keys
        key = keys.verify(self.services.reader.connection, token) if verify \
            else keys.cached(token, refresh=self.services.reader.connection)
        if key is None:
            return None
        if key.allows(READ_SCORES) or (kind == "profile" and key.allows(READ_CUSTOMERS)):
            return key
        return None

    def prefetch(self, environs: list[dict[str, Any]]) -> None:
        """Look up, in one statement per kind, the customers of the lane's requests.

        Only requests whose key is already verified in this process take part, so an anonymous
        flood cannot make the database work. Each answer found is left in its environ
        (:data:`MISSING` when PostgreSQL alone cannot give it), with the key. The statements run
        on the lane's pool: a slow statement or a lock wait ends server-side within 1 s or
        100 ms, and a database that stops answering altogether (a frozen host, a lost network)
        has its connection cut after :data:`BATCH_WAIT_SECONDS` by :class:`_Watchdog`; so a
        server's event loop waits a bounded time. On failure nothing is left, batching pauses
        (1 s, doubling up to 5 s while failures repeat), and the requests meet the failure
        themselves in the server's threads: 503 as usual.
        """
        if time.monotonic() < self.down_until:
            return
        groups: dict[tuple[str, bool], dict[str, list[dict[str, Any]]]] = {}
        for environ in environs:
            found = lookup_of(environ)
            if found is None:
                continue
            kind, customer_id = found
            key = self._key(environ, kind, verify=False)
            if key is not None:
                environ[KEY] = key
                contact = kind == "profile" and key.allows(READ_CUSTOMERS)
                groups.setdefault((kind, contact), {}).setdefault(customer_id, []).append(
                    environ)
        if not groups:
            return
        try:
            answers = self._fetch(groups)
        except Exception:  # noqa: BLE001 - each request meets the error again on its own
            self.failures += 1
            pause = min(DOWN_SECONDS[0] * 2 ** (self.failures - 1), DOWN_SECONDS[1])
            self.down_until = time.monotonic() + pause
            log.warning("batched lookup failed; lookups go to threads for %.0f s", pause)
            return
        self.failures = 0
        for (kind, contact), wanted in groups.items():
            found_cards = answers[kind, contact]
            for customer_id, requests in wanted.items():
                for environ in requests:
                    environ[CARD] = found_cards.get(customer_id, MISSING)

    def _fetch(self, groups: dict[tuple[str, bool], dict[str, list[dict[str, Any]]]],
               ) -> dict[tuple[str, bool], dict[str, bytes]]:
        """One statement per group, each watched (see :func:`lookups.watched_cards`)."""
        pool = self.services.lane or self.services.reader
        asked = [(kind, contact, list(wanted)) for (kind, contact), wanted in groups.items()]
        found = lookups.watched_cards(pool, [(ids, kind == "profile", contact)
                                             for kind, contact, ids in asked],
                                      self.watchdog, stale_seconds=STALE_SECONDS)
        return {(kind, contact): cards for (kind, contact, _), cards in zip(asked, found,
                                                                             strict=True)}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer a plain lookup here when the live run has it; else ask Flask."""
        answered = self.answer(environ, start_response)
        return self.fallback(environ, start_response) if answered is None else answered

    def answer(self, environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes] | None:
        """The lane's answer, or None (nothing started) when Flask must answer.

        Flask answers errors (including 429), provisional tiers and unknown or unscored
        customers. A server's event loop calls this for prefetched requests and hands a None
        to a thread, so that Flask's database work never runs on the loop.
        """
        found = lookup_of(environ)
        if found is None:
            return None
        kind, customer_id = found
        started = time.perf_counter()
        try:
            answer = self._answer(environ, kind, customer_id)
        except Exception:  # noqa: BLE001 - e.g. the database is down: Flask answers 503
            answer = None
        if answer is None:
            return None
        key, card = answer
        request_id = self.request_log(environ, ROUTES[kind], 200, started, key.id)
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(card))),
                                  ("X-Request-Id", request_id)])
        return [card]

    def _answer(self, environ: dict[str, Any], kind: str,
                customer_id: str) -> tuple[Any, bytes] | None:
        """The key and the answer, or None when Flask must answer."""
        # A prefetched request carries the key the batch verified: no database work here.
        key = environ.get(KEY) or self._key(environ, kind, verify=True)
        if key is None:
            return None
        limiter = self.services.limiter
        if limiter is not None:
            wait = environ.get(RATE_CHECKED)  # asked already (a request declined on a loop)
            if wait is None:
                wait = limiter.take(key.id)
                environ[RATE_CHECKED] = wait  # Flask must not take a second token
            if wait:
                return None
        card = environ.get(CARD)
        if card is None:
            with self.services.reader.connection() as conn:
                card = profiles.cards(
                    conn, [customer_id], profile=kind == "profile",
                    contact=kind == "profile" and key.allows(READ_CUSTOMERS),
                ).get(customer_id, MISSING)
        return (key, card) if card else None
