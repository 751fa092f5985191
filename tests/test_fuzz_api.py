"""schemathesis over /openapi.json against a real `crm-service serve`, every operation, all checks.

The server holds the scored CDNOW sample, so lookups find customers; schemathesis draws half its
customer ids, webhook ids and webhook URLs from those that exist (dictionaries below), the other
half from the schema. Settings and the documented exceptions: tests/schemathesis.toml.

Reproduce a failure with the seed the output prints:
``CRM_FUZZ_SEED=<seed> python -m pytest tests/test_fuzz_api.py``; run more cases with
``CRM_FUZZ_EXAMPLES=200``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from crm_service.access import api_keys
from crm_service.scoring import run_scoring
from tests.test_serve import call, free_port, serving

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).with_name("st")


@pytest.fixture()
def scored_server(cdnow_loaded, settings, dsn, tmp_path):
    run_scoring(cdnow_loaded, settings, as_of=date(1998, 6, 30))
    with serving(dsn, tmp_path, CRM_RATE_LIMIT_PER_SECOND="0", CRM_LOG_LEVEL="WARNING",
                 CRM_WEBHOOK_ALLOW_HOSTS="127.0.0.1") as (base, _):
        yield base


@pytest.mark.slow
def test_schemathesis_all_operations_all_checks(scored_server, cdnow_loaded, tmp_path):
    base = scored_server
    _, token = api_keys.create_key(cdnow_loaded, "fuzz", ["admin"])
    cdnow_loaded.commit()
    receiver = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: no worker delivers here
    hook_ids = []
    for _ in range(3):
        status, _, body = call(base + "/v1/webhooks", {"url": receiver, "events": ["tier.changed"]},
                               token, "POST")
        assert status == 201, body
        hook_ids.append(str(body["id"]))
    customers = [row[0] for row in cdnow_loaded.execute(
        "SELECT customer_id FROM customers ORDER BY customer_id LIMIT 50")]
    cdnow_loaded.commit()

    seed = int(os.environ.get("CRM_FUZZ_SEED", "20261122"))
    config = tmp_path / "schemathesis.toml"
    config.write_text("\n".join([
        f"seed = {seed}",  # a top-level key: before the tables of the base file
        CONFIG.read_text(),
        "[dictionaries.customer_ids]", f"values = {json.dumps(customers)}",
        "[dictionaries.webhook_ids]", f"values = {json.dumps(hook_ids)}",
        "[dictionaries.webhook_urls]", f"values = {json.dumps([receiver])}",
        "[parameters]",
        '"path.customer_id" = { dictionary = "customer_ids", probability = 0.5 }',
        '"path.webhook_id" = { dictionary = "webhook_ids", probability = 0.5 }',
        '"body.url" = { dictionary = "webhook_urls", probability = 0.5 }',
    ]) + "\n")
    spec = call(base + "/openapi.json")[2]
    operations = sum(1 for ops in spec["paths"].values() for m in ops if m != "parameters")

    examples = os.environ.get("CRM_FUZZ_EXAMPLES", "25")
    result = subprocess.run(
        [str(ST), "--config-file", str(config), "--no-color", "run", base + "/openapi.json",
         "--checks", "all", "--max-examples", examples,
         "-H", f"Authorization: Bearer {token}",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=1500)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-20000:]
    summary = out.split("SUMMARY")[-1]
    assert f"Tested: {operations}" in summary, summary  # every operation was exercised
    assert "Failures" not in summary, summary
