"""Settings read from the environment, validated once at start.

Every setting has a documented default (README, "Configuration"). A bad value stops the
process with a message that names the variable, the value and what would be accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_service.errors import ConfigError

_CURRENCY = re.compile(r"^[A-Z]{3}$")
T = TypeVar("T", int, float)


MIN_CHURN_HORIZON, MAX_CHURN_HORIZON = 7, 730


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; build it with :func:`load_settings`."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    data_dir_source: str = "default"  # "CRM_DATA_DIR" when set explicitly
    timezone: str = "UTC"
    currency: str = "USD"
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout_seconds: float = 2.0
    statement_timeout_ms: int = 60_000
    max_batch_orders: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    idempotency_ttl_hours: int = 24
    idempotency_stale_seconds: int = 120
    ingest_lock_wait_seconds: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 4
    auth_cache_seconds: float = 5.0
    rate_limit_per_second: float = 100.0
    rate_limit_burst: float = 200.0
    rate_limit_file: Path | None = None
    churn_horizon_days: int = 90
    churn_risk_medium: float = 0.5
    churn_risk_high: float = 0.8
    churn_model: str = "auto"
    keep_runs: int = 7
    keep_run_days: int = 35
    run_statement_timeout_ms: int = 6 * 3_600_000
    max_stale_days: int = 30
    event_retention_days: int = 90
    delivery_retention_days: int = 30
    schedule_slot_retention_days: int = 90
    maintenance_interval_minutes: int = 60
    secret_key: str | None = field(default=None, repr=False)
    webhook_allow_hosts: frozenset[str] = frozenset()
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency: int = 8
    webhook_retry_base_seconds: float = 30.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 86_400.0
    score_schedule: str | None = "02:00"
    phone_country_code: str | None = None
    link_rules: tuple[str, ...] = ("phone", "email")
    link_same_channel: bool = False
    console_secure_cookies: str = "auto"
    console_idle_minutes: int = 30
    console_session_hours: int = 12
    lookup_lane: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        """The reporting time zone as a ``ZoneInfo``."""
        return ZoneInfo(self.timezone)

    @property
    def embedded(self) -> bool:
        """True when no ``DATABASE_URL`` is set and the embedded PostgreSQL is used."""
        return not self.database_url


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded database lives without ``CRM_DATA_DIR``: one per-user location.

    ``$XDG_DATA_HOME/crm-service``, else ``~/.local/share/crm-service`` (the XDG rule, on
    every system), whatever the current directory, so a cron job or an ETL script started from
    another folder writes to the same database as the service. Not ``platformdirs``: its macOS
    folder (``~/Library/Application Support``) holds a space, which the embedded server's
    socket option and the DSN built from it cannot carry.
    """
    env = os.environ if env is None else env
    base = (env.get("XDG_DATA_HOME") or "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "crm-service"


def _data_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    raw = (env.get("CRM_DATA_DIR") or "").strip()
    if raw:
        # Resolved now: a relative CRM_DATA_DIR means the same folder for every child process.
        path, source = Path(raw).expanduser().resolve(), "CRM_DATA_DIR"
    else:
        path, source = default_data_dir(env), "default"
    if any(c.isspace() for c in str(path)) and not (env.get("DATABASE_URL") or "").strip():
        where = "CRM_DATA_DIR" if source == "CRM_DATA_DIR" else "the default data folder"
        raise ConfigError(
            f"{where} {str(path)!r} contains a space, which the embedded PostgreSQL's socket "
            "path cannot hold: set CRM_DATA_DIR to a folder without spaces")
    return path, source


def _number(env: Mapping[str, str], name: str, default: T, lo: T, hi: T) -> T:
    """``env[name]`` as the type of ``default`` (int or float), within ``lo..hi``."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    kind = type(default)
    try:
        value = kind(raw.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what} (expected {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range (expected {lo}..{hi})")
    return value


def _timezone(env: Mapping[str, str]) -> str:
    raw = (env.get("CRM_TIMEZONE") or "UTC").strip()
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"CRM_TIMEZONE={raw!r} is not an IANA time zone name (e.g. UTC, Asia/Shanghai)"
        ) from None
    return raw


def _country_code(env: Mapping[str, str]) -> str | None:
    raw = (env.get("CRM_PHONE_COUNTRY_CODE") or "").strip().lstrip("+")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 3 and raw[0] != "0"):
        raise ConfigError(f"CRM_PHONE_COUNTRY_CODE={raw!r} is not a country calling code "
                          "(1-3 digits, e.g. 86)")
    return raw


def _link_rules(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("CRM_LINK_RULES")
    if raw is None:
        return ("phone", "email")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if names == ["none"] or not names:
        return ()
    unknown = [n for n in names if n not in ("phone", "email")]
    if unknown:
        raise ConfigError(f"CRM_LINK_RULES={raw!r}: unknown rule(s) {', '.join(unknown)}; "
                          "use phone, email (comma-separated) or none")
    return tuple(n for n in ("phone", "email") if n in names)


def _link_same_channel(env: Mapping[str, str]) -> bool:
    raw = (env.get("CRM_LINK_SAME_CHANNEL") or "review").strip().lower()
    if raw not in ("review", "allow"):
        raise ConfigError(f"CRM_LINK_SAME_CHANNEL={raw!r}: use review (default: such pairs are "
                          "listed for review) or allow (link them anyway)")
    return raw == "allow"


def _secure_cookies(env: Mapping[str, str]) -> str:
    raw = (env.get("CRM_CONSOLE_SECURE_COOKIES") or "auto").strip().lower()
    if raw not in {"auto", "always", "never"}:
        raise ConfigError(f"CRM_CONSOLE_SECURE_COOKIES={raw!r}: one of auto, always, never")
    return raw


def _lookup_lane(env: Mapping[str, str]) -> bool:
    raw = (env.get("CRM_LOOKUP_LANE") or "on").strip().lower()
    if raw not in {"on", "off"}:
        raise ConfigError(f"CRM_LOOKUP_LANE={raw!r}: on or off")
    return raw == "on"


def _currency(env: Mapping[str, str]) -> str:
    raw = (env.get("CRM_CURRENCY") or "USD").strip().upper()
    if not _CURRENCY.match(raw):
        raise ConfigError(f"CRM_CURRENCY={raw!r} is not an ISO 4217 code (e.g. CNY, USD)")
    return raw


def _database_url(env: Mapping[str, str]) -> str | None:
    raw = (env.get("DATABASE_URL") or "").strip()
    if not raw:
        if (env.get("CRM_REQUIRE_DATABASE_URL") or "").strip() in {"1", "true", "yes"}:
            raise ConfigError(
                "DATABASE_URL is required here (CRM_REQUIRE_DATABASE_URL is set, as in the "
                "container image); e.g. postgresql://crm:secret@db:5432/crm"
            )
        return None
    if not raw.startswith(("postgresql://", "postgres://")) and "=" not in raw:
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URL (postgresql://user:pass@host:5432/db) "
            "or a libpq key=value string"
        )
    return raw


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r} must be one of " + ", ".join(allowed))
    return raw


def _hosts(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("CRM_WEBHOOK_ALLOW_HOSTS") or ""
    hosts = frozenset(h.strip().lower().strip("[]") for h in raw.split(",") if h.strip())
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9.:_-]{1,253}", host):
            raise ConfigError(f"CRM_WEBHOOK_ALLOW_HOSTS: {host!r} is not a host name or IP "
                              "address (comma-separated, e.g. 127.0.0.1,hooks.internal)")
    return hosts


def _schedule(env: Mapping[str, str]) -> str | None:
    raw = (env.get("CRM_SCORE_SCHEDULE") or "02:00").strip().lower()
    if raw in {"off", "none", "never"}:
        return None
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", raw)
    if not m:
        raise ConfigError(f"CRM_SCORE_SCHEDULE={raw!r} must be a daily time HH:MM in "
                          "CRM_TIMEZONE (e.g. 02:00), or off")
    return f"{int(m.group(1)):02d}:{m.group(2)}"


def _log_level(env: Mapping[str, str]) -> str:
    raw = (env.get("CRM_LOG_LEVEL") or "INFO").strip().upper()
    if raw not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"CRM_LOG_LEVEL={raw!r} must be one of DEBUG, INFO, WARNING, ERROR")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings from ``env`` (default ``os.environ``).

    Raises
    ------
    ConfigError
        If any variable holds a value that cannot be used.
    """
    env = os.environ if env is None else env
    pool_min = _number(env, "CRM_POOL_MIN_SIZE", 1, 0, 100)
    pool_max = _number(env, "CRM_POOL_MAX_SIZE", 10, 1, 200)
    if pool_max < max(pool_min, 1):
        raise ConfigError(
            f"CRM_POOL_MAX_SIZE={pool_max} must be at least CRM_POOL_MIN_SIZE={pool_min}"
        )
    risk_medium = _number(env, "CRM_CHURN_RISK_MEDIUM", 0.5, 0.01, 0.99)
    risk_high = _number(env, "CRM_CHURN_RISK_HIGH", 0.8, 0.01, 0.99)
    if risk_high <= risk_medium:
        raise ConfigError(f"CRM_CHURN_RISK_HIGH={risk_high} must be above "
                          f"CRM_CHURN_RISK_MEDIUM={risk_medium}")
    data_dir, data_dir_source = _data_dir(env)
    return Settings(
        database_url=_database_url(env),
        data_dir=data_dir,
        data_dir_source=data_dir_source,
        timezone=_timezone(env),
        currency=_currency(env),
        pool_min_size=pool_min,
        pool_max_size=pool_max,
        pool_timeout_seconds=_number(env, "CRM_POOL_TIMEOUT", 2.0, 0.1, 600.0),
        statement_timeout_ms=_number(env, "CRM_STATEMENT_TIMEOUT_MS", 60_000, 100, 86_400_000),
        max_batch_orders=_number(env, "CRM_MAX_BATCH_ORDERS", 1000, 1, 1000),
        max_body_bytes=_number(env, "CRM_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024, 5 * 1024 * 1024),
        idempotency_ttl_hours=_number(env, "CRM_IDEMPOTENCY_TTL_HOURS", 24, 24, 24 * 90),
        idempotency_stale_seconds=_number(env, "CRM_IDEMPOTENCY_STALE_SECONDS", 120, 1, 3600),
        ingest_lock_wait_seconds=_number(env, "CRM_INGEST_LOCK_WAIT_SECONDS", 10.0, 0.1, 50.0),
        log_level=_log_level(env),
        log_format=_choice(env, "CRM_LOG_FORMAT", "json", ("json", "text")),
        host=(env.get("CRM_HOST") or "127.0.0.1").strip(),
        port=_number(env, "CRM_PORT", 8000, 1, 65535),
        workers=_number(env, "CRM_WORKERS", 2, 1, 64),
        threads=_number(env, "CRM_THREADS", 4, 1, 64),
        auth_cache_seconds=_number(env, "CRM_AUTH_CACHE_SECONDS", 5.0, 0.0, 300.0),
        rate_limit_per_second=_number(env, "CRM_RATE_LIMIT_PER_SECOND", 100.0, 0.0, 1e6),
        rate_limit_burst=_number(env, "CRM_RATE_LIMIT_BURST", 200.0, 1.0, 1e7),
        rate_limit_file=Path(env["CRM_RATE_LIMIT_FILE"]) if env.get("CRM_RATE_LIMIT_FILE")
        else None,
        churn_horizon_days=_number(env, "CRM_CHURN_HORIZON_DAYS", 90, MIN_CHURN_HORIZON,
                                   MAX_CHURN_HORIZON),
        churn_risk_medium=risk_medium,
        churn_risk_high=risk_high,
        churn_model=_choice(env, "CRM_CHURN_MODEL", "auto", ("auto", "ml", "baseline")),
        keep_runs=_number(env, "CRM_KEEP_RUNS", 7, 1, 1000),
        keep_run_days=_number(env, "CRM_KEEP_RUN_DAYS", 35, 1, 3650),
        run_statement_timeout_ms=_number(env, "CRM_RUN_STATEMENT_TIMEOUT_MS", 6 * 3_600_000,
                                         1000, 7 * 86_400_000),
        max_stale_days=_number(env, "CRM_MAX_STALE_DAYS", 30, 1, 3650),
        event_retention_days=_number(env, "CRM_EVENT_RETENTION_DAYS", 90, 1, 3650),
        delivery_retention_days=_number(env, "CRM_DELIVERY_RETENTION_DAYS", 30, 1, 3650),
        schedule_slot_retention_days=_number(env, "CRM_SCHEDULE_SLOT_RETENTION_DAYS", 90, 1,
                                             3650),
        maintenance_interval_minutes=_number(env, "CRM_MAINTENANCE_INTERVAL_MINUTES", 60, 1,
                                             24 * 60),
        secret_key=(env.get("CRM_SECRET_KEY") or "").strip() or None,
        webhook_allow_hosts=_hosts(env),
        webhook_timeout_seconds=_number(env, "CRM_WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.1, 60.0),
        webhook_concurrency=_number(env, "CRM_WEBHOOK_CONCURRENCY", 8, 1, 64),
        phone_country_code=_country_code(env),
        link_rules=_link_rules(env),
        link_same_channel=_link_same_channel(env),
        console_secure_cookies=_secure_cookies(env),
        lookup_lane=_lookup_lane(env),
        console_idle_minutes=_number(env, "CRM_CONSOLE_IDLE_MINUTES", 30, 1, 24 * 60),
        console_session_hours=_number(env, "CRM_CONSOLE_SESSION_HOURS", 12, 1, 24 * 7),
        webhook_retry_base_seconds=_number(env, "CRM_WEBHOOK_RETRY_BASE_SECONDS", 30.0, 0.01,
                                           3600.0),
        webhook_retry_max_seconds=_number(env, "CRM_WEBHOOK_RETRY_MAX_SECONDS", 3600.0, 0.01,
                                          86_400.0),
        webhook_retry_window_seconds=_number(env, "CRM_WEBHOOK_RETRY_WINDOW_SECONDS", 86_400.0,
                                             0.1, 7 * 86_400.0),
        score_schedule=_schedule(env),
    )
