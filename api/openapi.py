"""OpenAPI document finishing: every error answer documented as RFC 9457 problem+json.

flask-smorest documents error responses as ``application/json`` with its own ``Error`` schema,
and only the ones a view declares. This apispec plugin rewrites each operation as it is
registered so the document says what the service really does:

* every 4xx/5xx response (and ``default``) is ``application/problem+json`` with the
  ``Problem`` schema;
* the answers any operation can give are listed on it: 401/403/429 on authenticated
  operations, 503 (database unavailable, with ``Retry-After``) everywhere, 400/413/415 where
  there is a body, 422 where there is input;
* links from ``POST /v1/webhooks`` to the operations on the created subscription, so clients
  (and schemathesis's stateful phase) can follow them.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin
from werkzeug.routing import BaseConverter

from crm_service.customers.ids import ID_IN_PATH, MAX_ID_LENGTH

PROBLEM = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; ``type`` identifies the kind of problem.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "example": "https://crm-service.dev/problems/invalid-input"},
        "title": {"type": "string", "example": "Invalid input"},
        "status": {"type": "integer", "example": 422},
        "detail": {"type": "string", "example": "limit: must be between 1 and 1000"},
        "instance": {"type": "string", "example": "/v1/customers"},
        "errors": {"description": "field errors, by location and field",
                   "type": "object", "additionalProperties": True},
    },
    "additionalProperties": True,
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}

_DESCRIPTIONS = {
    "400": "malformed JSON or header",
    "401": "missing, unknown, revoked or malformed API key",
    "403": "the key lacks the scope this operation needs",
    "404": "not found",
    "409": "conflict",
    "413": "body or batch larger than the limit",
    "415": "a body that is not application/json",
    "422": "invalid input",
    "429": "rate limit of this API key exceeded",
    "503": "database unavailable or busy; retry after the given seconds",
    "default": "unexpected error",
}

# flask-smorest refers to its lazily registered responses by name.
_SMOREST_NAMES = {"DEFAULT_ERROR": "default", "UNPROCESSABLE_ENTITY": "422"}

# POST /v1/webhooks answers with the new subscription's id; these operations take it.
_WEBHOOK_LINKS = {
    "GetWebhook": "/v1/webhooks/{webhook_id}",
    "DeleteWebhook": "/v1/webhooks/{webhook_id}",
    "EnableWebhook": "/v1/webhooks/{webhook_id}/enable",
    "WebhookDeliveries": "/v1/webhooks/{webhook_id}/deliveries",
}
_WEBHOOK_METHODS = {"GetWebhook": "get", "DeleteWebhook": "delete", "EnableWebhook": "post",
                    "WebhookDeliveries": "get"}


# What ``crm_service.customers.ids.check_customer_id`` accepts: 1-128 characters, no control
# characters.
PATH_PATTERNS = {
    "customer_id": {"pattern": f"^{ID_IN_PATH}$", "maxLength": MAX_ID_LENGTH},
    "webhook_id": {"pattern": "^[0-9]{1,18}$"},
}


class CustomerIdConverter(BaseConverter):
    """A customer id path segment: anything but ``search`` (and ``/``).

    So ``/v1/customers/search`` is only the search: DELETE there is 405, not the erasure of a
    customer called "search" (ingestion refuses that id).
    """

    regex = r"(?!search\Z)[^/]+"


def _problem_response(code: str, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or _DESCRIPTIONS.get(code, "error"),
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if code in {"429", "503"}:
        response["headers"] = dict(_RETRY_AFTER)
    return response


class ProblemDocsPlugin(BasePlugin):
    """Rewrites operations as they are registered (see the module docstring)."""

    def init_spec(self, spec: APISpec) -> None:
        """Register the ``Problem`` schema."""
        super().init_spec(spec)
        spec.components.schema("Problem", PROBLEM_SCHEMA)

    def path_helper(self, path: str | None = None, operations: dict | None = None,
                    parameters: list | None = None, **kwargs: Any) -> None:
        """Add the patterns of :data:`PATH_PATTERNS` to path parameters."""
        # Path parameters come from the URL rule's converter; add what the views check.
        for parameter in parameters or []:
            if isinstance(parameter, dict) and parameter.get("name") in PATH_PATTERNS:
                parameter.setdefault("schema", {}).update(PATH_PATTERNS[parameter["name"]])

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **kwargs: Any) -> None:
        """Problem+json error responses and the common answers, per operation."""
        for method, operation in (operations or {}).items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for code, response in list(responses.items()):
                code = str(code)
                if code != "default" and int(code) < 400:
                    continue
                if isinstance(response, str):  # a flask-smorest component name
                    responses[code] = _problem_response(_SMOREST_NAMES.get(response, code))
                elif isinstance(response, dict) and "$ref" not in response:
                    responses[code] = _problem_response(code, response.get("description"))
            has_body = "requestBody" in operation
            has_input = has_body or bool(operation.get("parameters")) or "{" in (path or "")
            common = ["503"] if (path or "").startswith("/v1/") else []
            if operation.get("security"):
                common += ["401", "403", "429"]
            if has_body:
                common += ["400", "413", "415"]
            if has_input:
                common.append("422")
            for code in common:
                responses.setdefault(code, _problem_response(code))
            if path == "/v1/webhooks" and method == "post":
                self._webhook_links(responses)

    @staticmethod
    def _webhook_links(responses: dict[str, Any]) -> None:
        created = responses.get("201") or responses.get(201)  # type: ignore[call-overload]
        if not isinstance(created, dict):
            return
        created["links"] = {
            name: {"operationRef": "#/paths/" + target.replace("/", "~1").replace("{", "%7B")
                   .replace("}", "%7D") + "/" + _WEBHOOK_METHODS[name],
                   "parameters": {"webhook_id": "$response.body#/id"}}
            for name, target in _WEBHOOK_LINKS.items()
        }
