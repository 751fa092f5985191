"""Shared helpers for benchmarks: a fresh embedded PostgreSQL and machine facts."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from crm_service.platform import schema
from crm_service.platform.embedded import start_embedded
from crm_service.platform.secretbox import new_key_text


def fresh_database(keep: str | None = None) -> tuple[str, Path]:
    """Start a new embedded server in a temporary directory; return (dsn, data dir).

    A temporary directory (a million customers take 1.5 GB) is stopped and deleted when the
    benchmark exits; ``keep`` names a directory that is kept for later runs.
    """
    data_dir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="crm-bench-"))
    # Benchmarks run the service with DATABASE_URL, where a server key is required.
    os.environ.setdefault("CRM_SECRET_KEY", new_key_text())
    if not keep:
        atexit.register(_remove, data_dir)
    dsn = start_embedded(data_dir)
    schema.upgrade(dsn)
    return dsn, data_dir


def _remove(data_dir: Path) -> None:
    import pgserver

    try:
        pgserver.get_server(data_dir / "pg").cleanup()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def machine() -> str:
    """One line describing the machine, for BENCHMARKS.md."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        check=False).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, commit {pg or '?'}")
