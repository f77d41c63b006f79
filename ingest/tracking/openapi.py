"""The OpenAPI description of ingest: the real request bodies (ingest reads raw bytes, so FastAPI
cannot infer them), the answers, and the Basic write-key scheme. Schemas come from
:mod:`worker.core.messages`, the one definition of the wire contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from worker.core.messages import AnyMessage

REF = "#/components/schemas/{model}"
_MESSAGES = TypeAdapter(AnyMessage).json_schema(ref_template=REF)

ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}
SUCCESS = {"type": "object", "required": ["success"], "properties": {"success": {"type": "boolean", "const": True}}}


def components() -> dict[str, Any]:
    """The schemas every operation refers to: the six message types, the batch, success and error."""
    schemas: dict[str, Any] = dict(_MESSAGES["$defs"])
    for name, schema in _MESSAGES["$defs"].items():  # single-call paths imply `type`: not required there
        call = dict(schema, required=[field for field in schema.get("required", []) if field != "type"])
        call["title"] = f"{name} call"
        schemas[f"{name}Call"] = call
    schemas["Message"] = {key: value for key, value in _MESSAGES.items() if key != "$defs"}
    schemas["Batch"] = {
        "type": "object",
        "required": ["batch"],
        "additionalProperties": True,
        "properties": {
            "batch": {"type": "array", "items": {"$ref": REF.format(model="Message")}},
            "sentAt": {"type": "string", "format": "date-time"},
            "writeKey": {"type": "string"},
            "context": {"type": "object", "additionalProperties": True},
            "integrations": {"type": "object", "additionalProperties": True},
        },
    }
    schemas["Success"] = SUCCESS
    schemas["Error"] = ERROR
    return schemas


def _json(ref: str | dict[str, Any]) -> dict[str, Any]:
    schema = {"$ref": REF.format(model=ref)} if isinstance(ref, str) else ref
    return {"content": {"application/json": {"schema": schema}}, "required": True}


def _answer(description: str, model: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, **_json(model)}
    answer.pop("required")
    if retry_after:
        answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return answer


ANSWERS: dict[int | str, dict[str, Any]] = {
    200: _answer("every message accepted (or dropped as a duplicate, or, in a batch, invalid and counted)", "Success"),
    400: _answer("malformed or oversize request; nothing enqueued", "Error"),
    401: _answer("missing, unknown or conflicting write key, or bad webhook signature; nothing enqueued", "Error"),
    503: _answer("Redis unreachable or the backlog above its cap; retry after Retry-After", "Error", True),
}

SETTINGS_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "the settings document (cacheable for 60 s)", "content": {"application/json": {}}},
    404: _answer("no destination has this write key", "Error"),
}


def operation(
    body: str | dict[str, Any], description: str, parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` for one POST route: its request body, and its parameters when any."""
    extra: dict[str, Any] = {"requestBody": _json(body), "description": description}
    if parameters:
        extra["parameters"] = parameters
    return extra


WEBHOOK_BODY = {
    "oneOf": [
        {"$ref": REF.format(model="Message")},
        {"type": "array", "items": {"$ref": REF.format(model="Message")}},
    ]
}
WEBHOOK_PARAMETERS = [
    {"name": "writeKey", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "X-Signature", "in": "header", "required": False, "schema": {"type": "string"}},
]


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the shared schemas and the Basic write-key scheme to FastAPI's generated document."""
    parts = document.setdefault("components", {})
    parts.setdefault("schemas", {}).update(components())
    parts["securitySchemes"] = {
        "writeKey": {"type": "http", "scheme": "basic", "description": "username = write key, empty password"}
    }
    for path, methods in document.get("paths", {}).items():
        if path.startswith("/v1/") and not path.startswith("/v1/projects/"):  # the settings document needs no key
            for spec in methods.values():
                spec["security"] = [{"writeKey": []}, {}]
    return document
