"""Bearer-token authentication and scope checks.

:func:`require` marks a view with the scopes it accepts. :func:`install` checks them in a
``before_request`` hook, so a request without a valid key is answered 401 (or 403) before its
body or query is parsed: an anonymous client learns nothing about validation rules. The
decorator checks again if the hook did not run (e.g. a view called directly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, g, request

from api.errors import ApiProblem
from api.services import services
from api.serving.fastpath import RATE_CHECKED
from crm_service.vocabulary import SCOPES

F = TypeVar("F", bound=Callable[..., Any])


def authenticate(accepted: tuple[str, ...]) -> None:
    """Set ``g.api_key`` from the bearer token, or raise 401/403 as problem+json."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="crm-service"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "Unauthorized", "send 'Authorization: Bearer <api key>'",
                         slug="unauthorized", headers=challenge)
    svc = services()
    key = svc.keys.verify(svc.reader.connection, token.strip())
    if key is None:
        raise ApiProblem(401, "Unauthorized", "the API key is invalid or revoked",
                         slug="unauthorized", headers=challenge)
    if not any(key.allows(s) for s in accepted):
        wanted = " or ".join(f"'{s}'" for s in accepted)
        raise ApiProblem(403, "Forbidden", f"this API key lacks the {wanted} scope",
                         slug="forbidden", required_scope=accepted[0])
    if svc.limiter is not None:
        # The lookup fast lane (api.serving.fastpath) may have spent this request's token already.
        wait = request.environ.get(RATE_CHECKED)
        if wait is None:
            wait = svc.limiter.take(key.id)
        if wait:
            limit = svc.settings.rate_limit_per_second
            raise ApiProblem(429, "Too Many Requests",
                             f"this API key may make {limit:g} requests a second (bursts of "
                             f"{svc.settings.rate_limit_burst:g}); retry after the delay",
                             slug="rate-limited",
                             headers={"Retry-After": str(max(1, math.ceil(wait)))})
    g.api_key = key


def require(scope: str, *alternatives: str) -> Callable[[F], F]:
    """Decorator: the request must carry an active key holding ``scope`` (or ``admin``).

    With ``alternatives``, any one of the scopes will do; the view checks
    ``g.api_key.allows(...)`` for what depends on which.
    """
    accepted = (scope, *alternatives)
    unknown = [s for s in accepted if s not in SCOPES]
    if unknown:  # at import time: a misspelt scope would otherwise lock every key out
        raise ValueError(f"unknown scope(s) {unknown}: see crm_service.vocabulary.SCOPES")

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if "api_key" not in g:
                authenticate(accepted)
            return view(*args, **kwargs)

        # functools.wraps copies this up through flask-smorest's decorators.
        wrapper._crm_scopes = accepted  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def install(app: Flask) -> None:
    """Authenticate before anything else looks at the request."""

    @app.before_request
    def _authenticate_first() -> None:
        view = app.view_functions.get(request.endpoint or "")
        cls = getattr(view, "view_class", None)
        method = getattr(cls, request.method.lower(), None) if cls is not None else None
        scopes = getattr(method, "_crm_scopes", None)
        if scopes:
            authenticate(scopes)
