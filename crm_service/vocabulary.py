"""The service's vocabulary, defined once: tiers, segments, bands, actions, event types, scopes.

The numeric vocabulary (tiers, value segments, churn bands, RFM segments, default actions) is
defined in :mod:`models.segments`, where the scoring maths needs it, and re-exported here; event
types and API-key scopes are the service's own. Everything above ``models`` (schemas, webhook
filters, the CLI, the console) takes them from here; ``tests/test_segments.py`` checks them
against the database's CHECK constraints.
"""

from __future__ import annotations

from models.segments import (
    ACTIONS,
    ALIVE_NOTES,
    CHURN_RISKS,
    DEFAULT_ACTIONS,
    RFM_SEGMENTS,
    TIERS,
    VALUE_SEGMENTS,
)

# The situations a tier policy maps to an action (the keys of its ``actions`` object).
ACTION_SITUATIONS = tuple(DEFAULT_ACTIONS)

# Lifecycle events (DESIGN.md §5): written when a run publishes, on erasure, merge and unmerge.
EVENT_TYPES = ("tier.changed", "vip.entered", "vip.lost", "dormant.entered",
               "churn_risk.raised", "customer.erased", "customer.merged", "customer.unmerged")
# The event types a run's publish writes (all but the erasure's).
RUN_EVENT_TYPES = EVENT_TYPES[:5]

# An order's status.
ORDER_STATUSES = ("paid", "refunded", "cancelled")

# What an API key may be allowed to do. ``admin`` implies every other scope.
SCOPES = ("orders:write", "customers:read", "customers:write", "scores:read", "runs:write",
          "webhooks:write", "metrics:read", "admin")

__all__ = ["ACTIONS", "ACTION_SITUATIONS", "ALIVE_NOTES", "CHURN_RISKS", "DEFAULT_ACTIONS",
           "EVENT_TYPES", "ORDER_STATUSES",
           "RFM_SEGMENTS", "RUN_EVENT_TYPES", "SCOPES", "TIERS", "VALUE_SEGMENTS"]
