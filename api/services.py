"""The service objects a request needs, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from crm_service.access.api_keys import VerifiedKeys
from crm_service.access.ratelimit import RateLimiter
from crm_service.platform.config import Settings
from crm_service.platform.db import Pool

EXTENSION = "crm"


@dataclass
class Services:
    """Settings and the connection pools of one app instance.

    ``pool`` is for writes (explicit transactions); ``reader`` is an autocommit pool for
    requests that only read (and for API key checks): one round trip per statement. ``lane``
    serves the lookup lane's batched reads on a server's event loop (api.serving.fastpath): short
    timeouts, so a slow database sends lookups to the threads instead of stalling the loop.
    """

    settings: Settings
    pool: Pool
    reader: Pool
    keys: VerifiedKeys
    limiter: RateLimiter | None = None
    lane: Pool | None = None


def services() -> Services:
    """The current app's :class:`Services`."""
    return current_app.extensions[EXTENSION]
