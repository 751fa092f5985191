"""Prometheus metrics (``GET /metrics``): what the processes count, and what the database says.

Two kinds:

- **Counted** by the processes as things happen: HTTP requests and their latency (by method,
  route template and status; the lookup lane included), webhook delivery attempts by outcome,
  and the database pools' use. With ``PROMETHEUS_MULTIPROC_DIR`` set (``crm-service serve``
  sets it), every gunicorn worker and the worker process beside them write to memory-mapped
  files in that folder, and a scrape sums them (``prometheus_client``'s multiprocess mode).
- **Read at scrape** from PostgreSQL, so they hold for every process on every host: scoring runs
  by status, the last published run's stage seconds, customers per tier and churn band in the
  live run, the webhook queue's depth and its oldest undelivered age. Each scrape runs a handful
  of index-backed queries on small tables, under a 5 s statement timeout; a database that is
  down gives ``crm_database_up 0`` and the counted metrics, not an error.

Labels hold only route templates, methods, statuses, tiers, bands, stage names and pool names:
no customer id, email, phone or key.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from crm_service.storage.gauges import read_gauges

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The counted metrics live in a registry of their own; in multiprocess mode a scrape reads the
# files instead.
_REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "crm_http_requests", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"], registry=_REGISTRY)
HTTP_SECONDS = Histogram(
    "crm_http_request_duration_seconds",
    "Time from the request reaching the app to its answer, by method, route template and status.",
    ["method", "route", "status"], registry=_REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
WEBHOOK_ATTEMPTS = Counter(
    "crm_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, retrying (a retry is scheduled), failed "
    "(given up).", ["outcome"], registry=_REGISTRY)
POOL_CONNECTIONS = Gauge(
    "crm_db_pool_connections", "Database pool connections by state (in_use, idle), summed over "
    "the live API processes.", ["pool", "state"], registry=_REGISTRY,
    multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "crm_db_pool_requests_waiting", "Requests waiting for a database connection, summed over "
    "the live API processes.", ["pool"], registry=_REGISTRY, multiprocess_mode="livesum")

_OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed"}
# gunicorn accepts any upper-case token as a method: the label keeps the standard ones only, so
# a client cannot mint series (each one a file entry in every process) by inventing methods.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_pools: dict[str, Any] = {}
_pools_seen = [0.0]
POOL_REFRESH_SECONDS = 1.0


# prometheus_client picks its value store when it is imported (this module imports it): the
# mode is what the environment said then, whatever it says at scrape time.
_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def multiprocess() -> bool:
    """Whether the processes count into ``PROMETHEUS_MULTIPROC_DIR``."""
    return _MULTIPROCESS


def observe_request(method: str, route: str, status: int, seconds: float | None) -> None:
    """Count one answered request (``route`` is a template, never a raw path)."""
    if method not in _METHODS:
        method = "other"
    key = (method, route, status)
    pair = _children.get(key)
    if pair is None:  # label lookups once per (method, route, status), not per request
        labels = (method, route, str(status))
        pair = _children.setdefault(key, (HTTP_REQUESTS.labels(*labels),
                                          HTTP_SECONDS.labels(*labels)))
    pair[0].inc()
    if seconds is not None:
        pair[1].observe(seconds)
    now = time.monotonic()
    if _pools and now - _pools_seen[0] >= POOL_REFRESH_SECONDS:  # every process, now and then
        _pools_seen[0] = now
        observe_pools(_pools)


def watch_pools(pools: dict[str, Any]) -> None:
    """Report these pools' use (refreshed at most every second, as requests end)."""
    _pools.update(pools)


def record_delivery(outcome: str) -> None:
    """Count one delivery attempt by what became of the delivery (``webhooks.record``)."""
    WEBHOOK_ATTEMPTS.labels(_OUTCOMES.get(outcome, outcome)).inc()


def observe_pools(pools: dict[str, Any]) -> None:
    """Set the pool gauges of this process from each ``psycopg_pool`` pool's stats."""
    for name, pool in pools.items():
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        POOL_CONNECTIONS.labels(name, "in_use").set(max(size - idle, 0))
        POOL_CONNECTIONS.labels(name, "idle").set(idle)
        POOL_WAITING.labels(name).set(stats.get("requests_waiting", 0))


def mark_process_dead(pid: int) -> None:
    """Drop a gone process's live gauges (gunicorn's ``child_exit``)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)


# --- read at scrape ----------------------------------------------------------------------------

def read_database(conn: psycopg.Connection) -> list[Metric]:
    """The metrics PostgreSQL holds, read in one short read-only transaction."""
    found = read_gauges(conn)
    runs, last, live, queue, hooks = (found.runs, found.last_published, found.live, found.queue,
                                      found.hooks)
    out: list[Metric] = []
    g = GaugeMetricFamily("crm_scoring_runs", "Scoring runs recorded, by status and kind.",
                          labels=["status", "kind"])
    for status in ("queued", "running", "succeeded", "failed"):
        for kind, dry in (("run", False), ("dry_run", True)):
            g.add_metric([status, kind], float(sum(n for s, d, n in runs
                                                   if s == status and d == dry)))
    out.append(g)
    stages = GaugeMetricFamily("crm_scoring_last_run_stage_seconds",
                               "Seconds per stage of the last published run.", labels=["stage"])
    finished = GaugeMetricFamily("crm_scoring_last_run_finished_timestamp_seconds",
                                 "When the last published run finished (Unix time).")
    took = GaugeMetricFamily("crm_scoring_last_run_seconds",
                             "Wall time of the last published run, start to finish.")
    if last is not None:
        for stage, seconds in sorted((last[0] or {}).items()):
            if isinstance(seconds, int | float):
                stages.add_metric([stage], float(seconds))
        finished.add_metric([], float(last[1]))
        if last[2] is not None:
            took.add_metric([], float(last[2]))
    out += [stages, finished, took]
    tiers = GaugeMetricFamily("crm_live_customers_by_tier", "Customers per tier in the live run.",
                              labels=["tier"])
    bands = GaugeMetricFamily("crm_live_customers_by_churn_risk",
                              "Customers per churn risk band in the live run.", labels=["risk"])
    customers = GaugeMetricFamily("crm_live_customers", "Customers scored in the live run.")
    as_of = GaugeMetricFamily("crm_live_run_as_of_timestamp_seconds",
                              "The live run's as_of day (Unix time of its midnight).")
    live_id = GaugeMetricFamily("crm_live_run_id", "The live run's id.")
    if live is not None:
        live_id.add_metric([], float(live[0]))
        as_of.add_metric([], float(live[1]))
        customers.add_metric([], float(live[2] or 0))
        for name, n in sorted((live[3] or {}).items()):
            tiers.add_metric([name], float(n))
        for name, n in sorted((live[4] or {}).items()):
            bands.add_metric([name], float(n))
    out += [live_id, as_of, customers, tiers, bands]
    pending, pending_age, unsent, unsent_age = queue or (0, None, 0, None)
    depth = GaugeMetricFamily(
        "crm_webhook_queue_depth", "Webhook work not yet done: deliveries pending (queued or "
        "retrying) and events not yet fanned out to an active subscription.", labels=["stage"])
    depth.add_metric(["pending_deliveries"], float(pending or 0))
    depth.add_metric(["events_not_fanned_out"], float(unsent or 0))
    ages = [a for a in (pending_age, unsent_age) if a is not None]
    oldest = GaugeMetricFamily("crm_webhook_oldest_undelivered_age_seconds",
                               "Age of the oldest event or delivery not yet delivered (0: none).")
    oldest.add_metric([], float(max(ages)) if ages else 0.0)
    subs = GaugeMetricFamily("crm_webhooks", "Webhook subscriptions by status.",
                             labels=["status"])
    for status in ("active", "disabled"):
        subs.add_metric([status], float(sum(n for s, n in hooks if s == status)))
    out += [depth, oldest, subs]
    return out


class _DatabaseCollector(Collector):
    """Collects :func:`read_database` at scrape; ``crm_database_up`` says whether it could."""

    def __init__(self, connection: Callable[[], AbstractContextManager[psycopg.Connection]]):
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("crm_database_up", "1 if the scrape could read the database.")
        try:
            with self.connection() as conn:
                found = read_database(conn)
        except Exception as exc:  # noqa: BLE001 - a scrape answers while the database is down
            log.warning("metrics: could not read the database (%s: %s)", type(exc).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            found = []
        up.add_metric([], 1.0 if found else 0.0)
        yield up
        yield from found
        took = GaugeMetricFamily("crm_metrics_database_read_seconds",
                                 "How long this scrape's database read took.")
        took.add_metric([], time.perf_counter() - started)
        yield took


def render(connection: Callable[[], AbstractContextManager[psycopg.Connection]],
           pools: dict[str, Any]) -> bytes:
    """The whole exposition: the processes' counts (summed over processes) and the database's."""
    observe_pools(pools)
    db = CollectorRegistry(auto_describe=False)
    db.register(_DatabaseCollector(connection))
    if multiprocess():
        counted = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(counted)
        return generate_latest(counted) + generate_latest(db)
    return generate_latest(_REGISTRY) + generate_latest(db)
