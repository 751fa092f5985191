"""Per-key rate limits: 429 with Retry-After, one budget shared by every worker process."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp

from api import create_app
from crm_service.access.ratelimit import RateLimiter


def _spend(path: str, n: int, out) -> None:
    limiter = RateLimiter(rate=1.0, burst=10, path=path)
    out.put(sum(limiter.take("key-a") == 0 for _ in range(n)))
    limiter.close()


def test_processes_share_one_bucket_per_key(tmp_path):
    path = str(tmp_path / "buckets.bin")
    out = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_spend, args=(path, 50, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    allowed = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    # 200 attempts from four processes: the burst of 10, plus at most a few refilled tokens
    # while the processes started. Separate buckets would have allowed 40.
    assert 10 <= allowed <= 14
    limiter = RateLimiter(rate=1.0, burst=10, path=tmp_path / "buckets.bin")
    assert limiter.take("key-b") == 0  # another key has its own bucket
    wait = limiter.take("key-a")
    assert 0 < wait <= 1.0
    limiter.close()


def test_api_answers_429_with_retry_after(settings, dsn, make_token, tmp_path):
    limited = dataclasses.replace(settings, rate_limit_per_second=0.5, rate_limit_burst=3,
                                  rate_limit_file=tmp_path / "b.bin")
    app = create_app(limited, dsn=dsn)
    client = app.test_client()
    one = {"Authorization": f"Bearer {make_token('scores:read')}"}
    other = {"Authorization": f"Bearer {make_token('scores:read')}"}
    codes = [client.get("/v1/events", headers=one).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = client.get("/v1/events", headers=one)
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    assert "requests a second" in r.get_json()["detail"]
    assert client.get("/v1/events", headers=other).status_code == 200
    # A request without a valid key is refused before it costs anyone's budget.
    assert client.get("/v1/events").status_code == 401
    app.extensions["crm"].pool.close()
    app.extensions["crm"].reader.close()
