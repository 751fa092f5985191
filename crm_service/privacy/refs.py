"""Pseudonymous customer references: the keyed hash every event, erasure and log carries.

``customer_ref`` computes it in Python; :func:`ref_sql` with :func:`ref_sql_params` computes the
same value inside a SQL statement (events written at publish, webhooks), so no customer id has to
leave the database to be hashed.
"""

from __future__ import annotations

from crm_service.platform import secretbox
from crm_service.platform.config import Settings

PURPOSE = "customer-ref"


def customer_ref(settings: Settings, customer_id: str) -> str:
    """The pseudonymous reference of a customer id (hex HMAC-SHA256 under the server key)."""
    return secretbox.keyed_digest(secretbox.server_key(settings), PURPOSE, customer_id).hex()


def ref_sql_params(settings: Settings) -> dict[str, bytes]:
    """Parameters for :data:`REF_SQL` (``%(ref_inner)s``, ``%(ref_outer)s``)."""
    inner, outer = secretbox.hmac_sql(secretbox.server_key(settings), PURPOSE)
    return {"ref_inner": inner, "ref_outer": outer}


def ref_sql(column: str) -> str:
    """SQL computing the raw HMAC of ``column`` (bytea) with :func:`ref_sql_params`."""
    return (f"sha256(%(ref_outer)s || sha256(%(ref_inner)s"
            f" || convert_to({column}, 'UTF8')))")
