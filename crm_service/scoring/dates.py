"""Which day a run scores as of, and the guard against scoring far past the data.

A run as of a day long after the newest order sees every customer's last purchase as long ago:
the whole base turns dormant, the run replaces the live one and fires a lifecycle event for
nearly every customer. So a run whose ``as_of`` is more than ``CRM_MAX_STALE_DAYS`` after the
newest paid order is refused before any work, unless the caller says it means it
(``allow_stale``); and a REST run without ``as_of`` scores as of the newest order's day when
that is earlier than yesterday.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from crm_service.errors import ValidationError
from crm_service.platform.config import Settings
from crm_service.storage.orders import newest_paid_order_day

if TYPE_CHECKING:
    import psycopg


class StaleScoringDateError(ValidationError):
    """``as_of`` is more than ``CRM_MAX_STALE_DAYS`` after the newest paid order."""

    title = "Scoring date long after the newest order"


@dataclass(frozen=True)
class ScoringDate:
    """The day a run scores as of, the newest paid order's day, and how ``as_of`` was chosen."""

    as_of: date
    newest_order: date | None
    notice: str | None = None


def choose_as_of(conn: psycopg.Connection, settings: Settings, requested: date | None,
                 today: date, *, allow_stale: bool = False) -> ScoringDate:
    """The run's ``as_of`` (``requested``, or the default) after the future and stale checks.

    Without ``requested``: today, or the newest paid order's day when that is before
    yesterday (the ``notice`` says so).

    Raises
    ------
    ValidationError
        If ``requested`` is after ``today``.
    StaleScoringDateError
        If ``as_of`` is too far past the newest paid order and ``allow_stale`` is not set.
    """
    newest = newest_paid_order_day(conn, settings.timezone)
    notice = None
    if requested is not None:
        if requested > today:
            raise ValidationError(f"as_of {requested} is in the future (today is {today})")
        as_of = requested
    elif newest is not None and newest < today - timedelta(days=1):
        as_of = newest
        notice = (f"as_of defaults to {newest}, the day of the newest paid order (there are "
                  f"none since; today is {today}); give as_of to score another day")
    else:
        as_of = today
    check_stale(settings, as_of, newest, allow_stale=allow_stale)
    return ScoringDate(as_of, newest, notice)


def check_stale(settings: Settings, as_of: date, newest: date | None, *,
                allow_stale: bool) -> None:
    """Refuse ``as_of`` more than ``settings.max_stale_days`` after ``newest``.

    No orders at all is not this guard's business: the run then fails for lack of history.
    """
    if allow_stale or newest is None:
        return
    gap = (as_of - newest).days
    if gap > settings.max_stale_days:
        raise StaleScoringDateError(
            f"as_of {as_of} is {gap} days after the newest paid order ({newest}), more than "
            f"CRM_MAX_STALE_DAYS={settings.max_stale_days}: every customer would look lapsed, "
            "and a run published so would replace the live one and fire a lifecycle event for "
            f"most of the base. Score as of {newest}, load the missing orders first, or, if "
            "this is what you mean, pass allow_stale: true (--allow-stale on the command line)")


def check_run_date(conn: psycopg.Connection, settings: Settings, as_of: date, *,
                   allow_stale: bool) -> None:
    """:func:`check_stale` against the newest paid order now in the database."""
    check_stale(settings, as_of, newest_paid_order_day(conn, settings.timezone),
                allow_stale=allow_stale)
