"""Identifiers: what a customer id, an order id and a channel name may be.

A customer id is a URL path segment (``/v1/customers/{id}``), so it cannot hold "/" and cannot
be "search". Ingestion is stricter than lookups (printable characters only): an id that passes
:func:`check_customer_id` may simply be unknown (404).
"""

from __future__ import annotations

import re

from crm_service.errors import ValidationError

MAX_ID_LENGTH = 128
CHANNEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")

# A customer id is a URL path segment (/v1/customers/{id}): it cannot hold "/" and cannot be
# "search", or the customer could not be looked up, exported or erased.
RESERVED_CUSTOMER_IDS = frozenset({"search"})
UNADDRESSABLE = "must not contain '/' or be 'search' (customer ids are URL path segments)"

# What a lookup accepts, also the OpenAPI pattern of the path parameter. "/" never reaches a
# view: the router splits on it.
ID_IN_PATH = rf"[^\x00-\x1f\x7f/]{{1,{MAX_ID_LENGTH}}}"
_ID_IN_PATH = re.compile(ID_IN_PATH)


def addressable(customer_id: str) -> bool:
    """True when the id can be used in ``/v1/customers/{id}``."""
    return "/" not in customer_id and customer_id not in RESERVED_CUSTOMER_IDS


def valid_customer_id(customer_id: str) -> bool:
    """Whether the id is 1-128 characters without control characters (the OpenAPI pattern)."""
    return _ID_IN_PATH.fullmatch(customer_id) is not None


def check_customer_id(customer_id: str) -> None:
    """Raise :class:`ValidationError` (422) unless :func:`valid_customer_id`."""
    if not valid_customer_id(customer_id):
        raise ValidationError(f"a customer id is 1-{MAX_ID_LENGTH} characters, "
                              "without control characters")
