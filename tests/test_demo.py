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
    # Made-up contact details and channel accounts, so the console's search can be tried.
    assert count(conn, "SELECT count(*) FROM customers WHERE email LIKE '%%@example.com'"
                       " AND phone LIKE '+86 138 0000 %%' AND name IS NOT NULL") == 2357
    assert count(conn, "SELECT count(*) FROM customer_identities WHERE channel = 'tmall'") == 2357
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


def test_demo_serves_the_console_and_says_where(conn, cli_env, tmp_path):
    """The README's first command ends with the API and console up, and prints the console URL."""
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    from tests.test_serve import free_port, stop, wait_until_up

    port = free_port()
    env = dict(os.environ, **cli_env, CRM_WORKERS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "crm_service", "demo", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("try:"):
                break
        output = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"console: {base}/console/" in output, output
        key = re.search(r"admin API key \(shown once[^)]*\): (\S+)", output).group(1)
        wait_until_up(base, proc)
        with urllib.request.urlopen(f"{base}/console/sign-in", timeout=10) as r:
            page = r.read().decode()
        assert r.status == 200 and 'name="api_key"' in page
        assert key not in page
    finally:
        stop(proc, seconds=30)
