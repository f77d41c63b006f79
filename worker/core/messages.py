"""Segment's six call types shared by ingest (validation) and worker.

The models document the wire contract (the OpenAPI schema) and :func:`parse` checks it by hand; what
travels through the queue is the message dict itself, as the client sent it (unknown keys kept), with
the normalizations of :func:`parse` applied: ``null`` means absent, numeric ids become strings,
``type`` is set.

Pure: pydantic only (for the schema; :func:`parse` checks the same rules by hand).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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
"""The wire contract as a schema (served in the OpenAPI document). :func:`parse` checks the same rules by hand."""

# -- the same rules as plain checks ----------------------------------------------------------------------
#
# Building a model per message was the top function of ingest's profile; the checks below state the models'
# rules once more, field by field in the models' field order (so that the first failing field, the one the
# reason names, is the same), with pydantic's wording for each failure. tests/core/test_messages_oracle.py
# runs them side by side with the models over the golden inputs, the tests' inputs and generated messages.

_STR, _OBJECT, _MESSAGE_ID, _EVENT, _REQUIRED_ID = range(5)
_COMMON = (
    ("userId", _STR),
    ("anonymousId", _STR),
    ("messageId", _MESSAGE_ID),
    ("context", _OBJECT),
    ("integrations", _OBJECT),
    ("writeKey", _STR),
)
_RULES: dict[str, tuple[tuple[str, int], ...]] = {
    "identify": (*_COMMON, ("traits", _OBJECT)),
    "track": (*_COMMON, ("event", _EVENT), ("properties", _OBJECT)),
    "page": (*_COMMON, ("name", _STR), ("category", _STR), ("properties", _OBJECT)),
    "screen": (*_COMMON, ("name", _STR), ("category", _STR), ("properties", _OBJECT)),
    "group": (*_COMMON, ("groupId", _REQUIRED_ID), ("traits", _OBJECT)),
    "alias": (
        ("userId", _REQUIRED_ID),
        *((name, rule) for name, rule in _COMMON if name != "userId"),
        ("previousId", _REQUIRED_ID),
    ),
}
_NOT_STRING = "Input should be a valid string"


def _violation(rule: int, value: object) -> str | None:
    """What is wrong with one field's value (``None``: absent), as pydantic words it; ``None`` if nothing."""
    if rule == _STR:
        return None if value is None or isinstance(value, str) else _NOT_STRING
    if rule == _OBJECT:
        return None if value is None or isinstance(value, dict) else "Input should be a valid dictionary"
    if value is None:
        return None if rule == _MESSAGE_ID else "required"
    if rule == _MESSAGE_ID:
        value = coerce_id(value)
    if not isinstance(value, str):
        return _NOT_STRING
    if rule == _MESSAGE_ID:
        if len(value) > MAX_MESSAGE_ID:
            return f"Value should have at most {MAX_MESSAGE_ID} items after validation, not {len(value)}"
        return None
    if value:
        return None
    if rule == _EVENT:
        return "String should have at least 1 character"
    return "Value should have at least 1 item after validation, not 0"


_TEXTS = (str, type(None))
_OBJECTS = (dict, type(None))


def _plain(message: dict[str, Any], kind: object) -> bool:
    """Whether the rules below accept ``message`` (no nulls) of type ``kind`` and would change nothing in it, decided
    in one expression per call type (no call per field): every field of the type the rules ask, exactly ``str`` or
    ``dict`` (so no id to coerce from a number), the required ones non-empty, the messageId not too long, and a
    non-empty ``userId`` or ``anonymousId``. ``False`` decides nothing: the rules field by field do."""
    get = message.get
    user, anonymous, message_id = get("userId"), get("anonymousId"), get("messageId")
    if not (
        user.__class__ in _TEXTS
        and anonymous.__class__ in _TEXTS
        and get("previousId").__class__ in _TEXTS
        and get("groupId").__class__ in _TEXTS
        and (message_id is None or (message_id.__class__ is str and len(message_id) <= MAX_MESSAGE_ID))
        and get("context").__class__ in _OBJECTS
        and get("integrations").__class__ in _OBJECTS
        and get("writeKey").__class__ in _TEXTS
        and (user or anonymous)
    ):
        return False
    if kind == "track":
        event = get("event")
        return event.__class__ is str and event != "" and get("properties").__class__ in _OBJECTS
    if kind == "identify":
        return get("traits").__class__ in _OBJECTS
    if kind in ("page", "screen"):  # (a tuple: kind may be unhashable)
        return (
            get("name").__class__ in _TEXTS
            and get("category").__class__ in _TEXTS
            and get("properties").__class__ in _OBJECTS
        )
    if kind == "group":
        return bool(get("groupId")) and get("traits").__class__ in _OBJECTS
    if kind == "alias":
        return bool(user) and bool(get("previousId"))
    return False


def parse(raw: object, implied_type: str | None = None, *, owned: bool = False) -> dict[str, Any]:
    """Check one message against the contract and return it normalized; raise MessageError.

    ``implied_type`` is the call type a single-call path implies (``/v1/track`` → ``track``); it wins
    over a ``type`` in the body, as Segment's API does. The reason names the first field (in the models'
    order) that breaks a rule. ``raw`` is decoded JSON: strings are ``str`` and objects ``dict`` (the
    models, in Python mode, would also take ``bytes`` for a string, which JSON cannot carry).

    The common message is decided by a first check (:func:`_plain`: nothing to normalize but its ``type`` and
    its nulls, one expression per call type); any other goes through the rules field by field. What is
    returned is a new dict (``raw`` is not changed), unless ``owned``: the caller hands ``raw`` over and never
    reads it again (ingest's decoded body, dropped once its messages are encoded), and a message the first check
    decides, without a null, is returned itself, its ``type`` set in place: no copy. Any other is copied as
    without ``owned``, ``raw`` unchanged. The rules, the reasons and the dict returned (keys, values, key order)
    are the same either way.
    """
    if raw.__class__ is not dict and not isinstance(raw, dict):
        raise MessageError("message: must be a JSON object")
    if None in raw.values():  # (a new dict: C-speed either way)
        message = {key: value for key, value in raw.items() if value is not None}
    elif owned and raw.__class__ is dict:
        message = raw
    else:
        message = dict(raw)
    if _plain(message, raw.get("type") if implied_type is None else implied_type):
        if implied_type is not None:
            message["type"] = implied_type
        return message
    if message is raw:  # (the rules below normalize: on a copy)
        message = dict(raw)
    if implied_type is not None:
        message["type"] = implied_type
    get = message.get
    for field in ID_FIELDS:
        value = get(field)
        if value is not None and value.__class__ is not str:
            message[field] = coerce_id(value)
    kind = get("type")
    if kind is None:
        raise MessageError("type: required")
    rules = _RULES.get(kind) if isinstance(kind, str) else None
    if rules is None:
        raise MessageError(f"type: must be one of {', '.join(CALL_TYPES)}")
    for field, rule in rules:
        value = get(field)
        if value is None:
            if rule < _EVENT:  # absent is fine but for the required fields
                continue
        elif value.__class__ is str:
            if rule == _STR or (value and rule != _OBJECT and (rule != _MESSAGE_ID or len(value) <= MAX_MESSAGE_ID)):
                continue  # the common cases, without a call
        elif rule == _OBJECT and value.__class__ is dict:
            continue
        problem = _violation(rule, value)
        if problem is not None:
            raise MessageError(f"{field}: {problem}")
    if not (get("userId") or get("anonymousId")):
        raise MessageError("userId or anonymousId: one of them must be a non-empty string")
    return message
