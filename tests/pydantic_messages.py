"""The oracle for ``worker.core.messages.parse``: the message check as it was, one pydantic model per message.

``parse`` now checks the contract by hand; this validates with the models themselves (the schema the OpenAPI
document serves) and words the first error as ``parse`` did, so tests and the benchmark can run both side by side.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from worker.core.errors import MessageError
from worker.core.messages import (
    CALL_TYPES,
    ID_FIELDS,
    Alias,
    AnyMessage,
    Group,
    Identify,
    Page,
    Screen,
    Track,
    coerce_id,
)

_adapter: TypeAdapter[Identify | Track | Page | Screen | Group | Alias] = TypeAdapter(AnyMessage)


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"][1:]) or "type"
    if error["type"] == "union_tag_not_found":
        return "type: required"
    if error["type"] == "union_tag_invalid":
        return f"type: must be one of {', '.join(CALL_TYPES)}"
    if error["type"] == "missing":
        return f"{field}: required"
    return f"{field}: {error['msg']}"


def model_parse(raw: object, implied_type: str | None = None) -> dict[str, Any]:
    """``parse`` as it was: the same normalisations, then ``TypeAdapter.validate_python`` on the models."""
    if not isinstance(raw, dict):
        raise MessageError("message: must be a JSON object")
    message = {key: value for key, value in raw.items() if value is not None}
    if implied_type is not None:
        message["type"] = implied_type
    for field in ID_FIELDS:
        if field in message:
            message[field] = coerce_id(message[field])
    try:
        _adapter.validate_python(message)
    except ValidationError as exc:
        raise MessageError(_describe(exc)) from None
    if not (message.get("userId") or message.get("anonymousId")):
        raise MessageError("userId or anonymousId: one of them must be a non-empty string")
    return message
