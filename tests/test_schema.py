"""Migrations: idempotent, and safe when two processes run them at once."""

import subprocess
import sys

import psycopg
from psycopg import sql

from crm_service.platform import schema
from crm_service.platform.embedded import with_database


def _fresh_db(server_dsn, name):
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_dsn, name)


def test_upgrade_is_idempotent(server_dsn):
    url = _fresh_db(server_dsn, "crm_mig_a")
    first = schema.upgrade(url)
    assert first[0] == "0001.initial-schema"
    assert schema.upgrade(url) == []
    assert schema.pending(url) == []


def test_two_processes_upgrading_at_once(server_dsn):
    url = _fresh_db(server_dsn, "crm_mig_b")
    code = ("import sys; from crm_service.platform import schema;"
            " print(len(schema.upgrade(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    applied = sorted(int(o[0].strip()) for o in outs)
    assert applied[-1] == len(schema._migrations()) and applied[:-1] == [0, 0]
    with psycopg.connect(url) as c:
        assert c.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
