"""The fast lane for ``GET /v1/customers/{id}/tier``: answered without Flask, lookups batched.

Agents and campaign tools call ``/tier`` far more than anything else, and most of its cost was
not the lookup but what surrounds it: Flask's request machinery, and one PostgreSQL round trip
per request (each a pair of context switches on a busy machine). :class:`TierLane` wraps the
Flask app's ``wsgi_app`` and answers the common case itself:

- a ``GET`` of ``/v1/customers/<id>/tier`` with a bearer key that this process verified
  recently (:class:`~crm_service.api_keys.VerifiedKeys`) or verifies now, holding
  ``scores:read`` (or ``admin``), within its rate limit;
- for a customer whose live-run answer PostgreSQL can build alone
  (:func:`crm_service.profiles.tier_cards`): scored in the live run, orders unchanged since.

Everything else, including every error, goes to the Flask view, which gives the same answers it
always did (401/403/404/422/429/503 as problem+json, provisional tiers). The lane changes how
fast a request is answered, never what the answer is; ``tests/test_fastpath.py`` checks both
lanes give the same body and headers.

**Batching.** :meth:`TierLane.prefetch` takes the requests a server received together and looks
all their customers up in one statement, leaving each answer in its request's environ. The
keep-alive worker (:class:`api.server.ProblemKeepAliveWorker`) calls it for each batch of
requests that arrived at once; other servers simply never call it, and each request is looked
up alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from crm_service import profiles

if TYPE_CHECKING:
    from api.services import Services

log = logging.getLogger("crm.request")

PREFIX = "/v1/customers/"
SUFFIX = "/tier"
ROUTE = "/v1/customers/<customer_id>/tier"  # the route template the request log shows
SCOPE = "scores:read"

# environ keys the lane leaves for the Flask app (not settable by clients: their headers
# arrive as HTTP_*).
CARD = "crm.tier_card"  # the prefetched answer (bytes), or MISSING
RATE_CHECKED = "crm.rate_limit_wait"  # the rate limiter was consulted: seconds to wait
MISSING = b""

StartResponse = Callable[..., Any]


def customer_id_of(environ: dict[str, Any]) -> str | None:
    """The customer id when the request is a plain ``GET .../<id>/tier``, else None.

    Plain means what the Flask route would take as is: no script name, a path that decodes as
    UTF-8, one non-empty segment, a valid id (:func:`api.customers.check_customer_id`'s rule).
    """
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("SCRIPT_NAME"):
        return None
    raw = environ.get("PATH_INFO", "")
    if not (raw.startswith(PREFIX) and raw.endswith(SUFFIX)):
        return None
    try:
        path = raw.encode("latin-1").decode("utf-8")  # how Werkzeug decodes PATH_INFO
    except UnicodeError:
        return None
    from api.customers import valid_customer_id

    customer_id = path[len(PREFIX):-len(SUFFIX)]
    if customer_id == "search" or not valid_customer_id(customer_id):
        return None
    return customer_id


class TierLane:
    """WSGI middleware: ``app.wsgi_app = TierLane(services, app.wsgi_app, log_request)``."""

    def __init__(self, services: Services, fallback: Callable[..., Iterable[bytes]],
                 request_log: Callable[..., str]) -> None:
        self.services = services
        self.fallback = fallback
        self.request_log = request_log

    def inline(self, environ: dict[str, Any]) -> bool:
        """Whether ``environ`` is a lookup this lane may answer.

        Cheap: a server may ask on its event loop.
        """
        return customer_id_of(environ) is not None

    def _key(self, environ: dict[str, Any], *, verify: bool) -> Any:
        """The request's verified key holding the scope, or None (then Flask answers)."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        keys = self.services.keys
        key = keys.verify(self.services.reader.connection, token) if verify \
            else keys.cached(token)
        if key is None or not key.allows(SCOPE):
            return None
        return key

    def prefetch(self, environs: list[dict[str, Any]]) -> None:
        """Look up, in one statement, the customers of the lane's requests among ``environs``.

        Only requests whose key is already verified in this process take part, so an anonymous
        flood cannot make the database work. Each answer found is left in its environ; a
        request without one is looked up alone later. A failing database leaves nothing, so
        the requests then meet the failure themselves and answer 503 as usual.
        """
        wanted: dict[str, list[dict[str, Any]]] = {}
        for environ in environs:
            customer_id = customer_id_of(environ)
            if customer_id is not None and self._key(environ, verify=False) is not None:
                wanted.setdefault(customer_id, []).append(environ)
        if len(wanted) < 2:
            return
        try:
            with self.services.reader.connection() as conn:
                cards = profiles.tier_cards(conn, list(wanted))
        except Exception:  # noqa: BLE001 - each request meets the error again on its own
            log.debug("batched tier lookup failed; requests fall back to their own lookups")
            return
        for customer_id, requests in wanted.items():
            for environ in requests:
                environ[CARD] = cards.get(customer_id, MISSING)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer a plain ``/tier`` lookup here when the live run has it; else ask Flask."""
        customer_id = customer_id_of(environ)
        if customer_id is None:
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        try:
            found = self._answer(environ, customer_id)
        except Exception:  # noqa: BLE001 - e.g. the database is down: Flask answers 503
            found = None
        if found is None:
            return self.fallback(environ, start_response)
        key, card = found
        request_id = self.request_log(environ, ROUTE, 200, started, key.id)
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(card))),
                                  ("X-Request-Id", request_id)])
        return [card]

    def _answer(self, environ: dict[str, Any], customer_id: str) -> tuple[Any, bytes] | None:
        """The key and the answer, or None when Flask must answer.

        Flask answers errors, provisional tiers and unknown customers.
        """
        key = self._key(environ, verify=True)
        if key is None:
            return None
        limiter = self.services.limiter
        if limiter is not None:
            wait = limiter.take(key.id)
            environ[RATE_CHECKED] = wait  # Flask must not take a second token
            if wait:
                return None
        card = environ.get(CARD)
        if card is None:
            with self.services.reader.connection() as conn:
                card = profiles.tier_cards(conn, [customer_id]).get(customer_id, MISSING)
        return (key, card) if card else None
