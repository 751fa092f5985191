"""Strict tooling as part of the suite: ruff (lint + docstrings), mypy, and a dependency audit."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.prefix) / "bin/ruff").exists(),
                    reason="ruff not installed")
def test_ruff_clean():
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    pytest.importorskip("mypy")
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependency_audit():
    """pip-audit over the installed dependencies: no known vulnerability.

    It asks the PyPI advisory service for each package. Where that service cannot be reached
    (this project's CI reaches only the package index, not PyPI's JSON API or OSV), every
    package comes back "could not be audited": the test is then skipped with that reason, not
    passed. ``pip`` and ``setuptools`` belong to the virtualenv, not to the service's image.
    """
    pytest.importorskip("pip_audit")
    result = _run("pip_audit", "--skip-editable", "--progress-spinner", "off", "--format", "json")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(result.stdout + result.stderr)
    deps = [d for d in report["dependencies"] if d["name"] not in {"pip", "setuptools"}]
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        reason = deps[0].get("skip_reason", "no dependencies") if deps else "no dependencies"
        pytest.skip(f"advisory service unreachable from this machine: {reason}")
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in audited if d.get("vulns")}
    assert not vulnerable, vulnerable
