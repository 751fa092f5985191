"""HTTP entry point: the Flask app factory.

Nothing is built at import time; :func:`create_app` makes the pool, registers blueprints and
error handlers. ``api.wsgi`` holds the only module-level app.
"""

from __future__ import annotations

import atexit
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request, send_from_directory
from flask_smorest import Api

from api import auth, console
from api.errors import register_error_handlers
from api.openapi import CustomerIdConverter, ProblemDocsPlugin
from api.rest import customers, events, health, ingestion, policy, scoring, webhooks
from api.rest import metrics as metrics_api
from api.schemas import CustomerBatchSchema, OrderBatchSchema
from api.services import EXTENSION, Services
from api.serving.fastpath import LookupLane
from crm_service import __version__
from crm_service.access.api_keys import VerifiedKeys
from crm_service.access.ratelimit import RateLimiter
from crm_service.platform import logs, metrics, secretbox
from crm_service.platform.config import Settings, load_settings
from crm_service.platform.db import create_pool, resolve_dsn

# Swagger UI's assets come from the swagger-ui-bundle package and are served locally, so the docs
# page works on machines without internet access.
SWAGGER_UI_ASSETS = "/docs/assets/"
# The lookup lane's batched reads run on a server's event loop: fail fast (then the lookups go
# to threads) rather than hold up every connection of the worker.
LANE_POOL_TIMEOUT_SECONDS = 0.25
LANE_STATEMENT_TIMEOUT_MS = 1000
LANE_LOCK_TIMEOUT_MS = 100


def create_app(settings: Settings | None = None, *, dsn: str | None = None) -> Flask:
    """Build the app. ``dsn`` defaults to ``DATABASE_URL`` or the embedded server."""
    settings = settings or load_settings()
    logs.configure(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="crm-service",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_ASSETS,
        API_SPEC_OPTIONS={
            "info": {"description": "Customer lifecycle and CRM segmentation. Errors are RFC "
                                    "9457 application/problem+json."},
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "an API key from `crm-service keys create`"}}},
        },
    )
    # Erasure and webhooks need the server key: refuse to start without it, not fail later.
    secretbox.server_key(settings)
    dsn = dsn or resolve_dsn(settings)
    # Not waiting for the database: a worker that boots while it is down serves 503s until it
    # is back, instead of failing to boot (which makes gunicorn stop the whole server).
    pool = create_pool(dsn, settings, wait=False)
    reader = create_pool(dsn, settings, name="crm-read", autocommit=True, wait=False)
    lane = create_pool(dsn, settings, name="crm-lane", autocommit=True, wait=False, max_size=2,
                       timeout=LANE_POOL_TIMEOUT_SECONDS,
                       statement_timeout_ms=LANE_STATEMENT_TIMEOUT_MS,
                       lock_timeout_ms=LANE_LOCK_TIMEOUT_MS, check=False)
    for opened in (pool, reader, lane):
        atexit.register(opened.close)
    metrics.watch_pools({"writer": pool, "reader": reader, "lane": lane})
    limiter = None
    if settings.rate_limit_per_second > 0:
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst,
                              settings.rate_limit_file)
        atexit.register(limiter.close)
    app.extensions[EXTENSION] = Services(settings=settings, pool=pool, reader=reader,
                                              keys=VerifiedKeys(settings.auth_cache_seconds),
                                              limiter=limiter, lane=lane)
    app.url_map.converters["customer_id"] = CustomerIdConverter
    api = Api(app, spec_kwargs={"extra_plugins": [ProblemDocsPlugin()]})
    api.register_converter(CustomerIdConverter, lambda _converter: {"type": "string"})
    api.spec.components.schema("OrderBatch", schema=OrderBatchSchema)
    api.spec.components.schema("CustomerBatch", schema=CustomerBatchSchema)
    api.register_blueprint(health.blp)
    api.register_blueprint(ingestion.blp)
    api.register_blueprint(scoring.blp)
    api.register_blueprint(customers.blp)
    api.register_blueprint(events.blp)
    api.register_blueprint(policy.blp)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(metrics_api.blp)
    app.register_blueprint(console.bp)
    _request_log(app)  # first: a request refused by authentication is timed too
    auth.install(app)  # before the body checks in register_error_handlers
    register_error_handlers(app, console_error_page=console.error_page)
    _serve_swagger_assets(app)
    # GET /v1/customers/{id} and .../tier in the common case: answered before Flask
    # (api.serving.fastpath). CRM_LOOKUP_LANE=off leaves every request to Flask (same answers,
    # slower).
    if settings.lookup_lane:
        app.wsgi_app = LookupLane(  # type: ignore[method-assign]
            app.extensions[EXTENSION], app.wsgi_app, log_request)
    return app


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_log = logging.getLogger("crm.request")


def request_id(given: str) -> str:
    """The client's ``X-Request-Id`` if sane, else a new one."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def log_request(environ: dict, route: str, status: int, started: float | None,
                key_id: str | None, rid: str | None = None) -> str:
    """Write the request's log line; return its request id (for ``X-Request-Id``)."""
    rid = rid or request_id(environ.get("HTTP_X_REQUEST_ID", ""))
    seconds = time.perf_counter() - started if started else None
    method = environ.get("REQUEST_METHOD") or "?"
    request_log.info("request", extra={
        "request_id": rid, "method": method, "route": route, "status": status,
        "duration_ms": round(seconds * 1000, 2) if seconds is not None else None,
        "key_id": key_id})
    metrics.observe_request(method, route, status, seconds)
    return rid


def _request_log(app: Flask) -> None:
    """One structured line per request; ``X-Request-Id`` taken (if sane) or made, and echoed.

    The route is the URL rule (``/v1/customers/<customer_id>``), so customer ids in paths and
    query strings never reach the log. The lookup fast lane writes the same line
    (:func:`log_request`).
    """

    @app.before_request
    def start() -> None:
        g.request_id = request_id(request.headers.get("X-Request-Id", ""))
        g.started = time.perf_counter()

    @app.after_request
    def finish(response: Response) -> Response:
        key = getattr(g, "api_key", None)
        rid = log_request(request.environ,
                          request.url_rule.rule if request.url_rule else "(no route)",
                          response.status_code, getattr(g, "started", None),
                          key.id if key is not None else None,
                          getattr(g, "request_id", None))
        response.headers["X-Request-Id"] = rid
        return response


def _serve_swagger_assets(app: Flask) -> None:
    from swagger_ui_bundle import swagger_ui_path

    def swagger_asset(filename: str):
        return send_from_directory(str(swagger_ui_path), filename, max_age=86400)

    app.add_url_rule(SWAGGER_UI_ASSETS + "<path:filename>", "swagger_asset", swagger_asset)
