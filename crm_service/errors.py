"""The service's error hierarchy: every error the service raises on purpose, with its problem type.

Each class says how it is answered over HTTP: ``status``, ``problem`` (the slug of its RFC 9457
problem type, ``https://crm-service.dev/problems/<problem>``) and ``title``. ``api.errors``
reads those attributes in one handler; a class with ``problem = None`` is an internal error
(logged, answered as a plain 500 without its detail). Subclasses inherit their parent's answer
unless they name their own. Errors that belong to one capability (a stale scoring date, a run
taken over by another worker) live in that capability's module, but subclass one of these.
"""

from __future__ import annotations

from typing import Any


class CrmError(Exception):
    """Base of every error the service raises on purpose."""

    title = "Service error"
    status = 500
    problem: str | None = None  # None: internal, answered without its detail
    retry_after: int | None = None  # seconds, for the Retry-After header

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ConfigError(CrmError):
    """A setting holds a value the service cannot use."""

    title = "Invalid configuration"


class DatabaseUnavailableError(CrmError):
    """PostgreSQL cannot be reached or started."""

    title = "Database unavailable"
    status, problem, retry_after = 503, "database-unavailable", 5


class ValidationError(CrmError):
    """Input that cannot be processed as a whole (e.g. a wrong CSV header)."""

    title = "Invalid input"
    status, problem = 422, "invalid-input"


class BatchTooLargeError(CrmError):
    """A batch holds more records than allowed."""

    title = "Batch too large"
    status, problem = 413, "batch-too-large"


class IngestionBusyError(CrmError):
    """Writers are paused by a bulk import holding the ingestion lock."""

    title = "Ingestion busy"
    status, problem, retry_after = 503, "ingestion-busy", 5


class NotFoundError(CrmError):
    """The addressed resource does not exist."""

    title = "Not found"
    status, problem = 404, "not-found"


class CustomerNotFoundError(NotFoundError):
    """No customer with that id."""

    title = "Customer not found"


class ApiKeyNotFoundError(NotFoundError):
    """No API key with that id."""

    title = "API key not found"


class IdempotencyConflictError(CrmError):
    """A request with the same Idempotency-Key is still being processed."""

    title = "Request in progress"
    status, problem = 409, "idempotency-in-progress"


class IdempotencyMismatchError(CrmError):
    """An Idempotency-Key was reused with a different request body."""

    title = "Idempotency-Key reused with a different request"
    status, problem = 422, "idempotency-key-reused"


class ConflictError(CrmError):
    """The request conflicts with the state of the resource (e.g. a run already published)."""

    title = "Conflict"
    status, problem = 409, "conflict"


class RunAlreadyPublishedError(ConflictError):
    """A run's score partition was published already (a run publishes at most once)."""

    title = "Run already published"
    problem = "run-already-published"


class SignInError(CrmError):
    """An API key cannot open a console session; ``reason`` is ``invalid`` or ``scope``."""

    title = "Sign-in failed"
    status, problem = 401, "sign-in-failed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
