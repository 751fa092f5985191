"""The demo data set: the CDNOW sample shipped inside lifetimes."""

from click.testing import CliRunner

from crm_service.cli import main
from tests.conftest import count


def test_demo_loads_cdnow_sample_and_mints_admin_key(conn, cli_env):
    r = CliRunner().invoke(main, ["demo", "--no-serve"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "6919 orders" in r.output and "admin API key (shown once): crm_" in r.output
    assert "http://127.0.0.1:8000/docs" in r.output
    assert count(conn, "SELECT count(*) FROM orders") == 6919
    assert count(conn, "SELECT count(*) FROM customers") == 2357
    assert count(conn, "SELECT count(DISTINCT ordered_at::date) FROM orders") > 500
    assert count(conn, "SELECT count(*) FROM api_keys WHERE 'admin' = ANY(scopes)") == 1
    # Running it again adds nothing but a new key.
    r = CliRunner().invoke(main, ["demo", "--no-serve"], catch_exceptions=False)
    assert "0 new, 6919 already loaded" in r.output
    assert count(conn, "SELECT count(*) FROM orders") == 6919
