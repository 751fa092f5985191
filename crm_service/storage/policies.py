"""Tier-policy versions (SQL): the policy in force, and storing a new version."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from models.segments import TierPolicy


def current_tier_policy(conn: psycopg.Connection) -> tuple[int, dict[str, Any]]:
    """The tier policy in force (version, JSON); the built-in defaults become version 1."""
    row = conn.execute("SELECT version, policy FROM tier_policies"
                       " ORDER BY version DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), row[1]
    conn.execute("INSERT INTO tier_policies (version, policy, created_by) VALUES (1, %s,"
                 " 'defaults') ON CONFLICT DO NOTHING", (json.dumps(TierPolicy().as_dict()),))
    row = conn.execute("SELECT version, policy FROM tier_policies WHERE version = 1").fetchone()
    assert row is not None
    return 1, row[1]


def set_tier_policy(conn: psycopg.Connection, policy: dict[str, Any], created_by: str) -> int:
    """Store a (validated) policy as the next version; return it. Runs from now on use it."""
    with conn.transaction():
        conn.execute("LOCK TABLE tier_policies IN SHARE ROW EXCLUSIVE MODE")
        current_tier_policy(conn)
        row = conn.execute(
            "INSERT INTO tier_policies (version, policy, created_by)"
            " SELECT max(version) + 1, %s, %s FROM tier_policies RETURNING version",
            (json.dumps(policy), created_by)).fetchone()
    assert row is not None
    return int(row[0])

