"""gunicorn worker classes whose own error answers are problem+json too.

gunicorn answers requests it cannot parse (request line over the limit, too many or too large
headers, a malformed request line) before the app sees them, with an HTML page, and logs the
raw request line for errors, which may hold customer ids or emails. These workers answer such
requests with RFC 9457 ``application/problem+json`` like the rest of the API and log only the
kind of problem.

Use ``--worker-class api.server.ProblemSyncWorker`` (or ``ProblemThreadWorker`` with
``--threads`` above 1); ``crm-service serve`` and the Dockerfile do.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

log = logging.getLogger("crm.request")

_STATUS: list[tuple[type[BaseException], int, str, str]] = [
    (http_errors.LimitRequestLine, 414, "URI Too Long", "request-line-too-long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large",
     "headers-too-large"),
    (http_errors.ParseException, 400, "Bad Request", "malformed-request"),
]


def problem_bytes(status: int, reason: str, slug: str | None, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with a problem+json body; the connection is closed."""
    body = json.dumps({
        "type": f"https://crm-service.dev/problems/{slug}" if slug else "about:blank",
        "title": reason, "status": status, "detail": detail,
    }).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def classify(exc: BaseException) -> tuple[int, str, str | None, str]:
    """Status, reason, problem slug and a detail without request data, for ``exc``."""
    for kind, status, reason, slug in _STATUS:
        if isinstance(exc, kind):
            if status == 414:
                return status, reason, slug, "the request line (URL) is longer than the limit"
            if status == 431:
                return status, reason, slug, "too many request headers, or one too large"
            return status, reason, slug, "the request could not be parsed as HTTP"
    return 500, "Internal Server Error", None, "an unexpected error occurred"


class _ProblemErrors:
    """Mixin replacing gunicorn's ``handle_error``."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, reason, slug, detail = classify(exc)
        # The exception's class only: its text and the request line may hold personal data.
        if status >= 500:
            log.error("request failed before the app answered: %s", type(exc).__name__)
        else:
            log.info("request refused by the HTTP parser: %s (%d)", type(exc).__name__, status)
        try:
            util.write_nonblock(client, problem_bytes(status, reason, slug, detail))
        except Exception:  # noqa: BLE001 - the client may be gone; nothing left to do
            log.debug("could not send the error answer")


class ProblemSyncWorker(_ProblemErrors, SyncWorker):
    """gunicorn's sync worker with problem+json parser errors."""


class ProblemThreadWorker(_ProblemErrors, ThreadWorker):
    """gunicorn's gthread worker with problem+json parser errors."""
