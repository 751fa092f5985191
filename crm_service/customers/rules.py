"""Customer-profile rules: validation and normalisation of email, phone and name.

Emails are matched case-insensitively. Phones are stored and matched in E.164 (``+8613800138000``)
by the ``phonenumbers`` library (Google's libphonenumber metadata: trunk prefixes, ``00`` and
other international prefixes, a country code typed without ``+``), reading a national number in
the deployment's country (``CRM_PHONE_COUNTRY_CODE``). So "+86 138-0013-8000", "0086 138 0013
8000" and "138 0013 8000" are one number. A number the library cannot read as a possible number
(or a national number without a configured country) keeps its digits, ``+`` and all: it still
matches itself however it was spaced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import phonenumbers

from crm_service.customers.ids import CHANNEL, MAX_ID_LENGTH, UNADDRESSABLE, addressable

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE_SEPARATORS = re.compile(r"[\s\-().\u00a0/]")
_PHONE = re.compile(r"\+?[0-9]{5,15}")  # ASCII digits only: lookups compare digit strings


def _printable(text: str) -> bool:
    """No control characters, NUL or lone surrogates (which PostgreSQL cannot store)."""
    return text.isprintable()
PROFILE_FIELDS = ("email", "phone", "name")
MAX_NAME_LENGTH = 200


def normalize_email(value: str, country_code: str | None = None) -> str | None:
    """Lower-cased, trimmed email, or None when it is not an address.

    ``country_code`` is unused: every contact normaliser has the same signature.
    """
    text = value.strip().lower()
    if len(text) > 254 or not _EMAIL.fullmatch(text) or not _printable(text):
        return None
    return text


# Bumped when the normalisation changes: stored values are then rewritten (platform.schema).
PHONE_SCHEME = "e164-v1"


@lru_cache(maxsize=256)
def _region(country_code: str | None) -> str | None:
    if not country_code:
        return None
    region = phonenumbers.region_code_for_country_code(int(country_code))
    return None if region == phonenumbers.UNKNOWN_REGION else region


def normalize_phone(value: str, country_code: str | None = None) -> str | None:
    """The number in E.164 (see the module docstring), or None when it is not a phone number.

    ``country_code`` (e.g. "86") is the country a national number is read in.
    """
    text = _PHONE_SEPARATORS.sub("", value.strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    if not _PHONE.fullmatch(text):
        return None
    region = _region(country_code)
    if text.startswith("+") or region is not None:
        try:
            number = phonenumbers.parse(text, None if text.startswith("+") else region)
        except phonenumbers.NumberParseException:
            return text
        # A national number is read in the country only if it is a valid number there (so
        # "12345" stays "12345"); an international one needs only to be possible.
        if phonenumbers.is_valid_number(number) or (
                text.startswith("+") and phonenumbers.is_possible_number(number)):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return text


_CONTACTS = (
    ("email", normalize_email, "not an email address"),
    ("phone", normalize_phone, "not a phone number (5-15 digits, optional leading +)"),
)


@dataclass
class Profile:
    """A validated profile update: only the fields present in the input are changed."""

    customer_id: str
    values: dict[str, str | None] = field(default_factory=dict)
    identities: list[tuple[str, str]] = field(default_factory=list)

    def column(self, name: str) -> tuple[bool, str | None]:
        """(is set, value) for one profile column, including the normalised ones."""
        return (name in self.values, self.values.get(name))


def check_customer(record: Mapping[str, Any], country_code: str | None = None
                   ) -> tuple[Profile | None, dict[str, str]]:
    """Validate one profile update; return ``(profile, {})`` or ``(None, errors)``.

    A key that is present with value None clears the field; an absent key leaves it unchanged.
    ``country_code`` is the one phones are normalised with (:func:`normalize_phone`).
    """
    errors: dict[str, str] = {}
    raw_id = record.get("customer_id")
    cid = "" if raw_id is None else str(raw_id).strip()
    if not cid:
        errors["customer_id"] = "required"
    elif len(cid) > MAX_ID_LENGTH or not _printable(cid):
        errors["customer_id"] = f"1-{MAX_ID_LENGTH} printable characters"
    elif not addressable(cid):
        errors["customer_id"] = UNADDRESSABLE
    values: dict[str, str | None] = {}
    for name, normalize, problem in _CONTACTS:
        if name not in record:
            continue
        raw = record[name]
        text = "" if raw is None else str(raw).strip()
        if not text:
            values[name] = values[f"{name}_normalized"] = None
        elif (norm := normalize(text, country_code)) is None:
            errors[name] = problem
        else:
            values[name], values[f"{name}_normalized"] = text, norm
    if "name" in record:
        raw_name = record["name"]
        full = None if raw_name is None else str(raw_name).strip() or None
        if full is not None and (len(full) > MAX_NAME_LENGTH or not _printable(full)):
            errors["name"] = f"at most {MAX_NAME_LENGTH} printable characters"
        values["name"] = full
    identities: list[tuple[str, str]] = []
    for i, ident in enumerate(record.get("identities") or []):
        chan = str(ident.get("channel") or "").strip().lower()
        ext = str(ident.get("external_id") or "").strip()
        if not CHANNEL.fullmatch(chan):
            errors[f"identities.{i}.channel"] = "1-32 characters: letters, digits, '_', '.', '-'"
        if not ext or len(ext) > MAX_ID_LENGTH or not _printable(ext):
            errors[f"identities.{i}.external_id"] = f"1-{MAX_ID_LENGTH} printable characters"
        identities.append((chan, ext))
    if errors:
        return None, errors
    return Profile(cid, values, identities), {}
