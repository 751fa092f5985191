"""Bearer-token authentication and scope checks."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from api.errors import ApiProblem
from api.services import services

F = TypeVar("F", bound=Callable[..., Any])


def require(scope: str, *alternatives: str) -> Callable[[F], F]:
    """Decorator: the request must carry an active key holding ``scope`` (or ``admin``).

    With ``alternatives``, any one of the scopes will do; the view checks
    ``g.api_key.allows(...)`` for what depends on which.
    """
    accepted = (scope, *alternatives)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            challenge = {"WWW-Authenticate": 'Bearer realm="crm-service"'}
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiProblem(401, "Unauthorized",
                                 "send 'Authorization: Bearer <api key>'", slug="unauthorized",
                                 headers=challenge)
            svc = services()
            key = svc.keys.verify(svc.reader.connection, token.strip())
            if key is None:
                raise ApiProblem(401, "Unauthorized", "the API key is invalid or revoked",
                                 slug="unauthorized", headers=challenge)
            if not any(key.allows(s) for s in accepted):
                wanted = " or ".join(f"'{s}'" for s in accepted)
                raise ApiProblem(403, "Forbidden", f"this API key lacks the {wanted} scope",
                                 slug="forbidden", required_scope=scope)
            g.api_key = key
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
