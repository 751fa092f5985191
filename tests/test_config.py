from pathlib import Path

import pytest

from crm_service.errors import ConfigError
from crm_service.platform.config import load_settings


def test_defaults():
    s = load_settings({})
    assert s.database_url is None and s.embedded
    assert s.timezone == "UTC" and s.currency == "USD"
    # One per-user folder, whatever the current directory.
    assert s.data_dir.is_absolute() and s.data_dir.name == "crm-service"
    assert s.data_dir_source == "default"
    assert load_settings({"CRM_DATA_DIR": "rel/dir"}).data_dir.is_absolute()
    assert s.max_stale_days == 30 and s.event_retention_days == 90
    assert load_settings({"XDG_DATA_HOME": "/srv/data"}).data_dir == Path("/srv/data/crm-service")
    assert s.max_batch_orders == 1000 and s.max_body_bytes == 5 * 1024 * 1024
    assert s.idempotency_ttl_hours == 24


def test_a_data_folder_with_a_space_is_refused_for_the_embedded_database():
    with pytest.raises(ConfigError, match="contains a space"):
        load_settings({"CRM_DATA_DIR": "/tmp/with space"})
    with pytest.raises(ConfigError, match="the default data folder"):
        load_settings({"XDG_DATA_HOME": "/Users/ana/Library/Application Support"})
    # Irrelevant with an external database.
    assert load_settings({"CRM_DATA_DIR": "/tmp/with space",
                          "DATABASE_URL": "postgresql://u@h/db"}).database_url


def test_values_are_read_and_normalised():
    s = load_settings({"CRM_TIMEZONE": "Asia/Shanghai", "CRM_CURRENCY": "cny",
                       "CRM_POOL_MAX_SIZE": "20", "DATABASE_URL": "postgresql://u@h/db"})
    assert s.timezone == "Asia/Shanghai" and s.currency == "CNY" and s.pool_max_size == 20
    assert not s.embedded
    assert load_settings({"CRM_PHONE_COUNTRY_CODE": "+86"}).phone_country_code == "86"
    assert load_settings({}).phone_country_code is None
    assert load_settings({}).console_secure_cookies == "auto"


@pytest.mark.parametrize(("env", "message"), [
    ({"CRM_TIMEZONE": "Mars/Olympus"}, "CRM_TIMEZONE='Mars/Olympus' is not an IANA"),
    ({"CRM_CURRENCY": "dollars"}, "CRM_CURRENCY='DOLLARS' is not an ISO 4217"),
    ({"CRM_POOL_MAX_SIZE": "ten"}, "CRM_POOL_MAX_SIZE='ten' is not an integer"),
    ({"CRM_POOL_MAX_SIZE": "0"}, "CRM_POOL_MAX_SIZE=0 is out of range"),
    ({"CRM_POOL_MIN_SIZE": "5", "CRM_POOL_MAX_SIZE": "2"}, "must be at least CRM_POOL_MIN_SIZE"),
    ({"CRM_POOL_TIMEOUT": "soon"}, "CRM_POOL_TIMEOUT='soon' is not a number"),
    ({"CRM_IDEMPOTENCY_TTL_HOURS": "1"}, "CRM_IDEMPOTENCY_TTL_HOURS=1 is out of range"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL must be a PostgreSQL URL"),
    ({"CRM_LOG_LEVEL": "LOUD"}, "CRM_LOG_LEVEL='LOUD'"),
    ({"CRM_PORT": "70000"}, "CRM_PORT=70000 is out of range"),
    ({"CRM_PHONE_COUNTRY_CODE": "086"}, "CRM_PHONE_COUNTRY_CODE='086' is not a country"),
    ({"CRM_PHONE_COUNTRY_CODE": "China"}, "CRM_PHONE_COUNTRY_CODE='China'"),
    ({"CRM_CONSOLE_SECURE_COOKIES": "yes"}, "one of auto, always, never"),
    ({"CRM_CONSOLE_IDLE_MINUTES": "0"}, "CRM_CONSOLE_IDLE_MINUTES=0 is out of range"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


def test_image_requires_database_url():
    with pytest.raises(ConfigError, match="DATABASE_URL is required"):
        load_settings({"CRM_REQUIRE_DATABASE_URL": "1"})
    assert load_settings({"CRM_REQUIRE_DATABASE_URL": "1",
                          "DATABASE_URL": "postgresql://u@h/db"}).database_url
