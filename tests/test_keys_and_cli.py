"""API keys through the CLI, db commands, config errors."""

import json
import time
from contextlib import contextmanager

from click.testing import CliRunner

from crm_service.access import api_keys
from crm_service.cli import main
from tests.conftest import count


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_key_lifecycle(client, conn, cli_env):
    r = run("keys", "create", "--name", "campaign-tool", "--scopes", "orders:write,scores:read",
            "--json")
    assert r.exit_code == 0
    created = json.loads(r.stdout)
    token = created["key"]
    # Only a hash is stored: the secret appears nowhere in the table.
    secret = token.split("_", 2)[2]
    dump = conn.execute("SELECT row_to_json(k)::text FROM api_keys k").fetchall()
    conn.commit()
    assert secret not in str(dump)
    r = run("keys", "list", "--json")
    listed = json.loads(r.stdout)
    assert listed[0]["id"] == created["id"] and "key" not in listed[0]
    assert listed[0]["scopes"] == ["orders:write", "scores:read"]
    headers = {"Authorization": f"Bearer {token}"}
    body = {"orders": []}
    assert client.post("/v1/orders", json=body, headers=headers).status_code == 200
    assert run("keys", "revoke", created["id"]).exit_code == 0
    # A verified key is reused for CRM_AUTH_CACHE_SECONDS (1 s in the tests): revocation
    # takes effect within that.
    deadline = time.monotonic() + 1.5
    while client.post("/v1/orders", json=body, headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works after the cache TTL"
        time.sleep(0.1)


def test_verified_keys_cache_successes_only_for_the_ttl(conn):
    calls = []

    @contextmanager
    def connection():
        calls.append(1)
        yield conn

    _, token = api_keys.create_key(conn, "cached", ["scores:read"])
    conn.commit()
    cache = api_keys.VerifiedKeys(0.3)
    assert cache.verify(connection, token).name == "cached"
    assert cache.verify(connection, token).name == "cached" and len(calls) == 1
    assert cache.verify(connection, token + "x") is None
    assert cache.verify(connection, token + "x") is None and len(calls) == 3  # never cached
    api_keys.revoke_key(conn, token.split("_")[1])
    conn.commit()
    assert cache.verify(connection, token) is not None  # still within the TTL
    time.sleep(0.35)
    assert cache.verify(connection, token) is None
    assert api_keys.VerifiedKeys(0).verify(connection, token) is None


def test_a_key_in_use_is_refreshed_before_it_expires(dsn, conn):
    """cached(..., refresh=) re-verifies in the background once half the TTL has passed, so a
    key in steady use never expires; a revocation still takes effect within the TTL."""
    import psycopg

    @contextmanager
    def connection():
        with psycopg.connect(dsn) as own:  # the refresh runs on its own thread
            yield own

    _, token = api_keys.create_key(conn, "steady", ["scores:read"])
    conn.commit()
    cache = api_keys.VerifiedKeys(0.6)
    assert cache.cached(token, refresh=connection) is None  # never verified: no refresh
    assert cache.verify(connection, token).name == "steady"
    deadline = time.monotonic() + 3  # five TTLs: only refreshes can keep it cached
    while time.monotonic() < deadline:
        assert cache.cached(token, refresh=connection) is not None, "expired while in use"
        time.sleep(0.02)
    api_keys.revoke_key(conn, token.split("_")[1])
    conn.commit()
    revoked_at = time.monotonic()
    while cache.cached(token, refresh=connection) is not None:
        assert time.monotonic() - revoked_at < 0.6 + 0.1, "a revoked key outlived the TTL"
        time.sleep(0.02)
    assert cache.cached(token) is None  # without refresh nothing brings it back


def test_key_errors(conn, cli_env):
    r = run("keys", "create", "--name", "x", "--scopes", "orders:write,everything")
    assert r.exit_code == 2 and "unknown scope(s): everything" in r.output  # usage error
    r = run("keys", "revoke", "nope")
    assert r.exit_code == 1 and "no API key with id 'nope'" in r.output
    assert count(conn, "SELECT count(*) FROM api_keys") == 0


def test_db_url_and_upgrade(cli_env, dsn):
    assert run("db", "url").stdout.strip() == dsn
    r = run("db", "upgrade")
    assert r.exit_code == 0 and "schema up to date" in r.output


def test_bad_config_exits_2(cli_env):
    r = run("db", "url", env={"CRM_TIMEZONE": "Nowhere/Land"})
    assert r.exit_code == 2 and "CRM_TIMEZONE='Nowhere/Land'" in r.output


def test_unreachable_database_is_a_clear_error(cli_env):
    r = run("db", "upgrade", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert r.exit_code == 1 and "cannot connect to PostgreSQL" in r.output
