"""The service objects a request needs, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from psycopg_pool import ConnectionPool

from crm_service.config import Settings

EXTENSION = "crm"


@dataclass
class Services:
    """Settings and the connection pool of one app instance."""

    settings: Settings
    pool: ConnectionPool


def services() -> Services:
    """The current app's :class:`Services`."""
    return current_app.extensions[EXTENSION]
