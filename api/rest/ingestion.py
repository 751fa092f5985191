"""``POST /v1/orders`` and ``POST /v1/customers``: batch ingestion with per-record outcomes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from api import examples
from api.auth import require
from api.errors import ApiProblem
from api.schemas import BatchResultSchema, CustomerInSchema, OrderInSchema
from api.services import services
from crm_service.ingestion.records import BatchResult, ingest_customer_batch, ingest_order_batch
from crm_service.storage import idempotency

blp = Blueprint("ingestion", __name__, url_prefix="/v1", description="Order and profile ingestion")

_PRINTABLE = re.compile(r"[\x21-\x7e]{1,255}")
_IDEMPOTENCY_DOC = {
    "parameters": [{
        "in": "header", "name": "Idempotency-Key", "required": False,
        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$", "minLength": 1,
                   "maxLength": 255},
        "description": "Replays the stored response for a repeated request (kept 24 h); "
                       "422 if reused with a different body, 409 while the first is running.",
    }],
}


_STR = (str,)
_SIMPLE_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "orders": {"order_id": _STR, "customer_id": _STR, "buyer_id": _STR, "channel": _STR,
               "ordered_at": _STR,
               "amount": (str, int, float), "currency": (str, type(None)),
               "status": (str, type(None))},
    "customers": {"customer_id": _STR, "channel": _STR, "buyer_id": _STR,
                  "email": (str, type(None)), "phone": (str, type(None)),
                  "name": (str, type(None))},
}


def read_body() -> bytes:
    """The raw body, at most MAX_CONTENT_LENGTH bytes, also for chunked uploads.

    Werkzeug answers 413 itself when Content-Length is too large; without one (chunked
    uploads) it hands out a stream silently cut at the limit, so the server's own decoded
    stream is read here, one byte past the limit.
    """
    cached = g.get("raw_body")
    if cached is not None:
        return cached
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        raw = request.get_data(cache=True)
    else:
        raw = request.environ["wsgi.input"].read(limit + 1)
        if len(raw) > limit:
            raise RequestEntityTooLarge()
    g.raw_body = raw
    return raw


def _unknown_fields(schema: Schema, record: dict) -> list[str]:
    """Names in ``record`` (and in nested lists of objects) that ``schema`` does not define."""
    names = sorted(set(record) - set(schema.fields))
    for name, field in schema.fields.items():
        inner = getattr(getattr(field, "inner", None), "schema", None)
        value = record.get(name)
        if inner is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    names += [f"{name}.{i}.{n}" for n in _unknown_fields(inner, item)]
    return names


def _parse_batch(envelope: str, record_schema: Schema) -> tuple[list[dict], dict[int, dict]]:
    """Parse the raw body into records; whole-request problems raise, record problems return."""
    if request.mimetype != "application/json":
        raise ApiProblem(415, "Unsupported Media Type", "send Content-Type: application/json",
                         slug="unsupported-media-type")
    raw = read_body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "Malformed JSON", f"the body is not valid JSON: {exc}",
                         slug="malformed-json") from None
    except RecursionError:
        raise ApiProblem(400, "Malformed JSON", "the body nests too deeply",
                         slug="malformed-json") from None
    if not isinstance(body, dict):
        raise ApiProblem(422, "Invalid request", f'expected an object {{"{envelope}": [...]}}',
                         slug="invalid-input")
    extra = sorted(set(body) - {envelope})
    if extra:
        raise ApiProblem(422, "Invalid request", "unknown field(s): " + ", ".join(extra),
                         slug="invalid-input", errors={k: ["unknown field"] for k in extra})
    records = body.get(envelope)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ApiProblem(422, "Invalid request", f'"{envelope}" must be a list of objects',
                         slug="invalid-input")
    limit = services().settings.max_batch_orders
    if len(records) > limit:
        raise ApiProblem(413, "Batch too large",
                         f"{len(records)} records in one request; the limit is {limit}",
                         slug="batch-too-large", limit=limit)
    unknown = {i: names for i, r in enumerate(records)
               if (names := _unknown_fields(record_schema, r))}
    if unknown:
        raise ApiProblem(
            422, "Invalid request", "unknown field(s) in records; nothing was written",
            slug="invalid-input",
            errors={f"{envelope}.{i}": {k: ["unknown field"] for k in ks}
                    for i, ks in unknown.items()},
        )
    pre_rejected: dict[int, dict[str, str]] = {}
    simple = _SIMPLE_TYPES.get(envelope, {})
    for i, record in enumerate(records):
        # marshmallow costs ~20 us a record; most records are plainly well-typed, so it only
        # runs (to word the errors) when this quick check has a doubt.
        if all(type(v) in simple.get(k, ()) for k, v in record.items()):
            continue
        errs = record_schema.validate(record, partial=True)
        if errs:
            pre_rejected[i] = {k: "; ".join(map(str, v)) if isinstance(v, list) else str(v)
                               for k, v in errs.items()}
    return records, pre_rejected


def _run_batch(envelope: str, record_schema: Schema,
               ingest: Callable[..., BatchResult]) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _PRINTABLE.fullmatch(key):
        raise ApiProblem(400, "Invalid Idempotency-Key",
                         "1-255 printable ASCII characters without spaces",
                         slug="invalid-idempotency-key")
    records, pre_rejected = _parse_batch(envelope, record_schema)
    svc = services()
    key_id = g.api_key.id
    if key is not None:
        fingerprint = idempotency.request_fingerprint(request.method, request.path,
                                                      read_body())
        with svc.pool.connection() as conn:
            stored = idempotency.claim(
                conn, key_id, key, fingerprint, ttl_hours=svc.settings.idempotency_ttl_hours,
                stale_seconds=svc.settings.idempotency_stale_seconds)
        if stored is not None:
            resp = Response(stored.body, status=stored.status, content_type=stored.content_type)
            resp.headers["Idempotent-Replayed"] = "true"
            return resp
    try:
        with svc.pool.connection() as conn, conn.transaction():
            result = ingest(conn, svc.settings, records, pre_rejected=pre_rejected)
            payload: dict[str, Any] = {"results": result.results, "totals": result.totals}
            if envelope == "customers":
                touched = [r["customer_id"] for r in result.results
                           if r["outcome"] in ("inserted", "updated")]
            body = json.dumps(payload, separators=(",", ":")).encode()
            if key is not None:
                idempotency.complete(conn, key_id, key, idempotency.StoredResponse(
                    200, "application/json", body))
    except BaseException:
        if key is not None:
            with svc.pool.connection() as conn:
                idempotency.release(conn, key_id, key)
        raise
    if envelope == "customers" and touched:
        # The linking rules, once the profiles are committed (a merge takes the writers' lock
        # alone, which this batch held shared); `identities resolve` catches up on any miss.
        from crm_service.customers import identities

        try:
            with svc.pool.connection() as conn:
                identities.link_after_ingest(conn, svc.settings, touched)
        except Exception as exc:  # noqa: BLE001 - the batch is committed; resolve catches up
            # The error's type only: a database error's detail can quote row values.
            current_app.logger.warning("linking rules after a profile batch skipped: %s",
                                       type(exc).__name__)
    return Response(body, status=200, content_type="application/json")


@blp.route("/orders")
class Orders(MethodView):
    """Order batches from any channel."""

    @blp.doc(requestBody={"required": True, "content": {"application/json": {
        "schema": "OrderBatch",
        "example": {"orders": [{"order_id": "TM-1001", "customer_id": "C-1", "channel": "tmall",
                                "ordered_at": "2024-05-01T10:30:00+08:00", "amount": "129.90"}]},
    }}}, security=[{"bearerAuth": []}], **_IDEMPOTENCY_DOC)
    @blp.response(200, BatchResultSchema, example=examples.BATCH_RESULT)
    @blp.alt_response(400, description="malformed JSON")
    @blp.alt_response(401, description="missing or invalid API key")
    @blp.alt_response(403, description="key lacks orders:write")
    @blp.alt_response(409, description="same Idempotency-Key still running")
    @blp.alt_response(413, description="more than 1000 orders or body over 5 MB")
    @blp.alt_response(422, description="unknown fields, or Idempotency-Key reused")
    @require("orders:write")
    def post(self):
        """Ingest up to 1000 orders.

        Each record gets an outcome by index: `inserted`, `updated` (status or amount changed,
        e.g. a refund), `duplicate` (identical resend) or `rejected` with field errors. Valid
        records commit together in one transaction; rejected ones never block them.
        """
        return _run_batch("orders", OrderInSchema(), ingest_order_batch)


@blp.route("/customers")
class Customers(MethodView):
    """Customer profiles."""

    @blp.doc(requestBody={"required": True, "content": {"application/json": {
        "schema": "CustomerBatch",
        "example": {"customers": [{"customer_id": "C-1", "email": "li.wei@example.com",
                                   "identities": [{"channel": "jd", "external_id": "jd_88231"}]}]},
    }}}, security=[{"bearerAuth": []}], **_IDEMPOTENCY_DOC)
    @blp.response(200, BatchResultSchema, example=examples.BATCH_RESULT)
    @require("customers:write")
    def post(self):
        """Upsert up to 1000 customer profiles with their channel identities.

        Emails are matched case-insensitively and phones by digits. An absent field is left
        unchanged; null clears it.
        """
        return _run_batch("customers", CustomerInSchema(), ingest_customer_batch)
