"""HTTP entry point: the Flask app factory.

Nothing is built at import time; :func:`create_app` makes the pool, registers blueprints and
error handlers. ``api.wsgi`` holds the only module-level app.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask, send_from_directory
from flask_smorest import Api

from api import customers, events, health, ingestion, policy, scoring, webhooks
from api.errors import register_error_handlers
from api.schemas import CustomerBatchSchema, OrderBatchSchema
from api.services import EXTENSION, Services
from crm_service import __version__
from crm_service.api_keys import VerifiedKeys
from crm_service.config import Settings, load_settings
from crm_service.db import create_pool, resolve_dsn

# Swagger UI's assets come from the swagger-ui-bundle package and are served locally, so the docs
# page works on machines without internet access.
SWAGGER_UI_ASSETS = "/docs/assets/"


def create_app(settings: Settings | None = None, *, dsn: str | None = None) -> Flask:
    """Build the app. ``dsn`` defaults to ``DATABASE_URL`` or the embedded server."""
    settings = settings or load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
    dsn = dsn or resolve_dsn(settings)
    pool = create_pool(dsn, settings)
    reader = create_pool(dsn, settings, name="crm-read", autocommit=True)
    atexit.register(pool.close)
    atexit.register(reader.close)
    app.extensions[EXTENSION] = Services(settings=settings, pool=pool, reader=reader,
                                              keys=VerifiedKeys(settings.auth_cache_seconds))
    api = Api(app)
    api.spec.components.schema("OrderBatch", schema=OrderBatchSchema)
    api.spec.components.schema("CustomerBatch", schema=CustomerBatchSchema)
    api.register_blueprint(health.blp)
    api.register_blueprint(ingestion.blp)
    api.register_blueprint(scoring.blp)
    api.register_blueprint(customers.blp)
    api.register_blueprint(events.blp)
    api.register_blueprint(policy.blp)
    api.register_blueprint(webhooks.blp)
    register_error_handlers(app)
    _serve_swagger_assets(app)
    return app


def _serve_swagger_assets(app: Flask) -> None:
    from swagger_ui_bundle import swagger_ui_path

    def swagger_asset(filename: str):
        return send_from_directory(str(swagger_ui_path), filename, max_age=86400)

    app.add_url_rule(SWAGGER_UI_ASSETS + "<path:filename>", "swagger_asset", swagger_asset)
