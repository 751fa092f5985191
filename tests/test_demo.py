"""The demo data set: the CDNOW sample shipped inside lifetimes."""

from click.testing import CliRunner

from crm_service.cli import main
from tests.conftest import count


def test_demo_loads_cdnow_sample_and_mints_admin_key(conn, cli_env):
    r = CliRunner().invoke(main, ["demo", "--no-serve"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "6919 orders" in r.output and "admin API key (shown once" in r.output
    assert "start the API with: crm-service serve" in r.output
    assert count(conn, "SELECT count(*) FROM orders") == 6919
    assert count(conn, "SELECT count(*) FROM customers") == 2357
    assert count(conn, "SELECT count(DISTINCT ordered_at::date) FROM orders") > 500
    assert count(conn, "SELECT count(*) FROM api_keys WHERE 'admin' = ANY(scopes)") == 1
    # Running it again adds no orders, and the new key replaces the old one.
    r = CliRunner().invoke(main, ["demo", "--no-serve"], catch_exceptions=False)
    assert "0 new, 6919 already loaded" in r.output
    # The live run stays live (it might be a later one queued through the API).
    assert "scores: the live run" in r.output
    assert count(conn, "SELECT count(*) FROM scoring_runs") == 1
    assert count(conn, "SELECT count(*) FROM orders") == 6919
    assert count(conn, "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 1
    assert count(conn, "SELECT count(*) FROM api_keys") == 2


def test_demo_refuses_a_busy_port_before_doing_anything(conn, cli_env):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(main, ["demo", "--port", str(port)], catch_exceptions=False)
    assert r.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.output and "--port" in r.output
    assert "admin API key" not in r.output
    assert count(conn, "SELECT count(*) FROM api_keys") == 0
