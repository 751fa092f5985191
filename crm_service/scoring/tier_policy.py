"""The tier policy as users send it (REST body or JSON file): validated into a stored form."""

from __future__ import annotations

from typing import Any

from crm_service.errors import ValidationError
from models.segments import PolicyError, TierPolicy


def validate_policy(data: Any, source: str = "tier policy") -> dict[str, Any]:
    """A complete, valid policy from user data; fields left out take their defaults.

    A ``version`` field (as in what GET or ``tier-policy show`` returns) is ignored: the
    service numbers versions.

    Raises
    ------
    ValidationError
        Naming the field that is unknown, out of range or inconsistent.
    """
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: the policy must be a JSON object")
    fields = {k: v for k, v in data.items() if k != "version"}
    try:
        return TierPolicy.from_dict(fields).as_dict()
    except (PolicyError, TypeError) as exc:
        raise ValidationError(f"{source}: invalid tier policy: {exc}") from None
