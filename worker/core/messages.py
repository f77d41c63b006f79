"""Segment's six call types shared by ingest (validation) and worker.

The models document and check the wire contract; what travels through the queue is the message
dict itself, as the client sent it (unknown keys kept), with the normalizations of :func:`parse`
applied: ``null`` means absent, numeric ids become strings, ``type`` is set.

Pure: pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from worker.core.errors import MessageError

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_MESSAGE_ID = 100
ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId")


def coerce_id(value: object) -> object:
    """A number used as an id becomes its string (``42`` → ``"42"``); booleans are not numbers."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def identifier(value: object) -> str | None:
    """An id as sent: a non-empty string (numbers become strings), else ``None``."""
    if value.__class__ is not str:
        value = coerce_id(value)
        if not isinstance(value, str):
            return None
    return value or None


Id = Annotated[str | None, BeforeValidator(coerce_id)]
RequiredId = Annotated[str, BeforeValidator(coerce_id), Field(min_length=1)]
Object = dict[str, Any] | None


class Message(BaseModel):
    """Fields common to every call. Unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    type: str
    userId: Id = None
    anonymousId: Id = None
    messageId: Annotated[str | None, BeforeValidator(coerce_id), Field(max_length=MAX_MESSAGE_ID)] = None
    timestamp: Any = None
    originalTimestamp: Any = None
    sentAt: Any = None
    receivedAt: Any = None
    context: Object = None
    integrations: Object = None
    writeKey: str | None = None


class Identify(Message):
    type: Literal["identify"]
    traits: Object = None


class Track(Message):
    type: Literal["track"]
    event: Annotated[str, Field(min_length=1)]
    properties: Object = None


class Page(Message):
    type: Literal["page"]
    name: str | None = None
    category: str | None = None
    properties: Object = None


class Screen(Message):
    type: Literal["screen"]
    name: str | None = None
    category: str | None = None
    properties: Object = None


class Group(Message):
    type: Literal["group"]
    groupId: RequiredId
    traits: Object = None


class Alias(Message):
    type: Literal["alias"]
    userId: RequiredId
    previousId: RequiredId


AnyMessage = Annotated[Identify | Track | Page | Screen | Group | Alias, Field(discriminator="type")]
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


def parse(raw: object, implied_type: str | None = None) -> dict[str, Any]:
    """Check one message against the contract and return it normalized; raise MessageError.

    ``implied_type`` is the call type a single-call path implies (``/v1/track`` → ``track``); it wins
    over a ``type`` in the body, as Segment's API does.
    """
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
