"""The service's error hierarchy; ``api.errors`` maps each class to one HTTP status."""

from __future__ import annotations

from typing import Any


class CrmError(Exception):
    """Base of every error the service raises on purpose."""

    title = "Service error"

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


class ValidationError(CrmError):
    """Input that cannot be processed as a whole (e.g. a wrong CSV header)."""

    title = "Invalid input"


class BatchTooLargeError(CrmError):
    """A batch holds more records than allowed."""

    title = "Batch too large"


class IngestionBusyError(CrmError):
    """Writers are paused by a bulk import holding the ingestion lock."""

    title = "Ingestion busy"


class NotFoundError(CrmError):
    """The addressed resource does not exist."""

    title = "Not found"


class CustomerNotFoundError(NotFoundError):
    """No customer with that id."""

    title = "Customer not found"


class ApiKeyNotFoundError(NotFoundError):
    """No API key with that id."""

    title = "API key not found"


class IdempotencyConflictError(CrmError):
    """A request with the same Idempotency-Key is still being processed."""

    title = "Request in progress"


class IdempotencyMismatchError(CrmError):
    """An Idempotency-Key was reused with a different request body."""

    title = "Idempotency-Key reused with a different request"
