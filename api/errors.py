"""One mapping from errors to RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, json, request
from werkzeug.exceptions import HTTPException

from crm_service import errors as e
from crm_service.platform.db import DatabaseUnavailable

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://crm-service.dev/problems/"

def problem(status: int, title: str, detail: str | None = None, *, slug: str | None = None,
            **extra: Any) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.path
    body.update(extra)
    return Response(json.dumps(body), status=status, mimetype=PROBLEM)


class ApiProblem(Exception):
    """Raised in views to answer with a specific problem."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 slug: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.slug = status, title, detail, slug
        self.headers = headers or {}
        self.extra = extra


def _flatten(messages: Any, path: str = "") -> list[str]:
    """Field errors (webargs' nested {location: {field: [messages]}}) as readable lines."""
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            where = "" if key in {"json", "query", "path", "_schema"} and not path else str(key)
            out += _flatten(value, f"{path}.{where}".strip(".") if where else path)
        return out
    if isinstance(messages, list):
        return [f"{path}: {m}" if path else str(m) for m in messages if not isinstance(m, dict)] \
            + [line for m in messages if isinstance(m, dict) for line in _flatten(m, path)]
    return [f"{path}: {messages}" if path else str(messages)]


def register_error_handlers(
        app: Flask, *,
        console_error_page: Callable[[HTTPException], Any] | None = None) -> None:
    """Route every error through :func:`problem`.

    ``console_error_page`` renders the HTML page for errors under ``/console`` that the router
    raises before the console's blueprint is known (passed in by the app factory, so this
    module does not import the console).
    """

    @app.errorhandler(ApiProblem)
    def _api_problem(exc: ApiProblem) -> Response:
        resp = problem(exc.status, exc.title, exc.detail, slug=exc.slug, **exc.extra)
        resp.headers.update(exc.headers)
        return resp

    @app.errorhandler(e.CrmError)
    def _domain(exc: e.CrmError) -> Response:
        # One mapping for every domain error: the class says its status and problem type.
        if exc.problem is None:
            log.exception("internal service error: %s", type(exc).__name__)
            return problem(500, "Internal error", "an unexpected error occurred")
        extra = dict(exc.extra)
        retry_after = extra.pop("retry_after", exc.retry_after)
        resp = problem(exc.status, exc.title, exc.detail, slug=exc.problem, **extra)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    @app.before_request
    def _json_bodies_only() -> None:
        # A body sent as anything but JSON is refused, never silently ignored (the schema
        # parser would otherwise see no fields and fall back to defaults).
        if request.method in {"POST", "PUT", "PATCH"} and request.path.startswith("/v1/") \
                and (request.content_length or request.headers.get("Transfer-Encoding")) \
                and request.mimetype != "application/json":
            raise ApiProblem(415, "Unsupported Media Type", "send Content-Type: application/json",
                             slug="unsupported-media-type")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if console_error_page is not None and (request.path.startswith("/console/")
                                               or request.path == "/console"):
            # Errors the router raises before the console's blueprint is known (a method the
            # path does not allow, say): the browser gets the console's HTML page.
            return console_error_page(exc)  # type: ignore[no-any-return]
        status = exc.code or 500
        extra: dict[str, Any] = {}
        # flask-smorest / webargs put field errors on the exception.
        data = getattr(exc, "data", None)
        detail = exc.description
        title = exc.name
        slug = None
        if status == 400 and request.mimetype == "application/json":
            title, detail, slug = "Malformed JSON", "the body is not valid JSON", "malformed-json"
        elif isinstance(data, dict) and "messages" in data:
            extra["errors"] = data["messages"]
            detail = "invalid request: " + "; ".join(_flatten(data["messages"]))
            title, slug = "Invalid input", "invalid-input"
        if status == 415:
            detail, slug = "send Content-Type: application/json", "unsupported-media-type"
        if status == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body is larger than the limit of {limit} bytes"
            slug, extra["limit_bytes"] = "body-too-large", limit
        resp = problem(status, title, detail, slug=slug, **extra)
        if status == 405 and exc.get_response().headers.get("Allow"):
            resp.headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    for kind in DatabaseUnavailable:
        @app.errorhandler(kind)
        def _database_down(exc: Exception) -> Response:
            log.warning("database unavailable: %s", type(exc).__name__)
            resp = problem(503, "Database unavailable", "the database did not answer in time; "
                           "retry shortly", slug="database-unavailable")
            resp.headers["Retry-After"] = "5"
            return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The route template, not the path: paths hold customer ids.
        route = request.url_rule.rule if request.url_rule else "(no route)"
        log.exception("unhandled error on %s %s", request.method, route)
        return problem(500, "Internal error", "an unexpected error occurred")
