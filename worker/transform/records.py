"""The records of one message: :func:`transform` maps one Segment message, for one destination, to its CleverTap
records, or to an outcome value. It never raises on a JSON object; ``now`` is passed in, and what was dropped or
cut is counted on an optional :class:`TransformStats` (the caller turns it into metrics and debug logs).

- ``list`` of records: the main record first, then a push-token record when there is one;
- :class:`Skip`: the message is acknowledged and sends nothing, token records included (``group`` is
  ``unsupported_type``; ``alias`` is ``alias_disabled`` when the destination's ``alias`` is off, and
  ``alias_needs_object_id`` when ``send_anonymous_id_as_object_id`` is off: there is no objectId to link;
  ``disabled_by_integrations``: see :mod:`worker.transform.integrations`);
- :class:`Invalid`: the message breaks the contract (no ``userId``/``anonymousId``, unknown ``type``,
  a track without ``event``, ...); the worker dead-letters it as ``invalid_message``. Checked before any
  setting is applied, so an invalid message is invalid whatever the destination's settings;
- :class:`~worker.transform.deletions.Delete`: the user's CleverTap profile is to be deleted
  (:mod:`worker.transform.deletions` says when).

Where the keys, values, profile fields and timestamps are decided: :mod:`worker.transform.values`,
:mod:`worker.transform.keycase`, :mod:`worker.transform.traits`, :mod:`worker.transform.timestamps`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from worker.core.messages import CALL_TYPES, identifier
from worker.transform.deletions import Delete, asks_deletion
from worker.transform.integrations import turned_off
from worker.transform.timestamps import epoch_seconds
from worker.transform.traits import profile
from worker.transform.values import TransformStats, clean, clean_finding, truncate

if TYPE_CHECKING:
    from worker.core.destinations import Destination

__all__ = ["Delete", "Invalid", "Skip", "TransformStats", "transform"]

CHARGED_SOURCE = "Order Completed"
_TIME_FIELDS = ("timestamp", "originalTimestamp", "receivedAt")
_PUSH_TYPES = {"android": "fcm", "ios": "apns", "ipados": "apns", "tvos": "apns", "watchos": "apns", "macos": "apns"}
_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_IDS_REQUIRED = "userId or anonymousId: one of them must be a non-empty string"


@dataclass(frozen=True, slots=True)
class Skip:
    """Send nothing, by rule; ``reason`` is the ``skipped`` metric's label."""

    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """The message can never be sent; ``reason`` says which field is wrong."""

    reason: str


Record = dict[str, Any]


def _timestamp(message: Mapping[str, Any], now: float) -> int:
    for field in _TIME_FIELDS:
        value = message.get(field)
        if value is not None:
            seconds = epoch_seconds(value)
            if seconds is not None:
                return seconds
    return math.floor(now)


def _is_object(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object (a dict, tested first: the ABC check is slow), or any other mapping."""
    return value.__class__ is dict or isinstance(value, Mapping)


def _object(value: Any) -> Mapping[str, Any]:
    return value if _is_object(value) else {}


def _identify_traits(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """An identify's traits: its top-level ``traits``; when those are absent or empty, its ``context.traits``
    (RudderStack's clients put identify traits only there). Never both merged: a client that sends both means
    the top level, and ``context.traits`` is then a cache of older traits."""
    traits = _object(message.get("traits"))
    if traits:
        return traits
    return _object(_object(message.get("context")).get("traits"))


def _amount(value: Any) -> int | float | None:
    """A number, or a numeric string converted (``"12"`` → 12, ``"12.50"`` → 12.5); ``None`` otherwise."""
    cls = value.__class__
    if cls is int:
        return int(value)
    if cls is float:
        return float(value) if math.isfinite(value) else None
    if cls is str and _NUMBER.fullmatch(value):
        text = value.strip()
        if text.lstrip("+-").isdigit() and len(text) <= 20:
            return int(text)
        number = float(text)
        return number if math.isfinite(number) else None
    return None


def _charged(properties: Mapping[str, Any], stats: TransformStats | None) -> dict[str, Any]:
    """Order Completed's event data: ``Charged ID``, ``Amount`` and ``Items`` beside the other properties."""
    data, products = clean_finding(properties, "products", stats)  # the last spelling of "products" wins
    data.pop("products", None)
    order_id = data.pop("order_id", None)
    if order_id is not None:
        data["Charged ID"] = order_id
    for field in ("total", "revenue"):
        value = data.get(field)
        if value is None:
            continue
        cls = value.__class__  # (a kept number is finite: clean dropped the others; _amount for the rest)
        amount = value if cls is int or cls is float else _amount(value)
        if amount is not None:
            data["Amount"] = amount
            break
    if isinstance(products, list):
        data["Items"] = [clean(product, stats) for product in products if _is_object(product)]
    return data


def _push_token(message: Mapping[str, Any], anonymous_id: str | None) -> Record | None:
    """The token record of a message with ``context.device.token`` and an anonymousId."""
    context = message.get("context")
    if anonymous_id is None or not _is_object(context):
        return None
    device = context.get("device")
    if not _is_object(device):
        return None
    token = device.get("token")
    if not isinstance(token, str) or not token:
        return None
    for platform in (_object(context.get("os")).get("name"), device.get("type")):
        if isinstance(platform, str) and (kind := _PUSH_TYPES.get(platform.strip().lower())):
            return {"type": "token", "objectId": anonymous_id, "tokenData": {"id": token, "type": kind}}
    return None


def _check(message: Mapping[str, Any], kind: str) -> Invalid | None:
    """What each call type needs beyond an id, so that an invalid message is never sent."""
    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str) or not event:
            return Invalid("event: required (a non-empty string)")
    elif kind == "alias":
        for field in ("userId", "previousId"):
            if identifier(message.get(field)) is None:
                return Invalid(f"{field}: required (a non-empty string)")
    elif kind == "group" and identifier(message.get("groupId")) is None:
        return Invalid("groupId: required (a non-empty string)")
    return None


_RECORD_TYPES = {"identify": "profile", "track": "event", "page": "event", "screen": "event", "alias": "", "group": ""}
"""Each call type (:data:`~worker.core.messages.CALL_TYPES`) and its record's type; ``""``: the call branches off
(:func:`_alias_or_group`)."""


def _record_type(kind: Any) -> str | None:
    return _RECORD_TYPES.get(kind) if isinstance(kind, str) else None


def _invalid_kind(kind: Any) -> Invalid:
    return Invalid("type: required" if kind is None else f"type: must be one of {', '.join(CALL_TYPES)}")


def _alias_or_group(
    message: Mapping[str, Any],
    kind: str,
    destination: Destination,
    *,
    user_id: str | None,
    anonymous_id: str | None,
    now: float,
) -> list[Record] | Skip | Invalid:
    """The rest of the rules for an alias or a group (ids checked): a group is never sent; an alias's profile record
    links ``previousId`` (the objectId) to ``userId``."""
    problem = _check(message, kind)
    if problem is not None:
        return problem
    if turned_off(message.get("integrations")):
        return Skip("disabled_by_integrations")
    if kind == "group":
        return Skip("unsupported_type")
    if not destination.alias:
        return Skip("alias_disabled")
    if not destination.send_anonymous_id_as_object_id:
        return Skip("alias_needs_object_id")
    record: Record = {"type": "profile", "identity": user_id, "objectId": identifier(message.get("previousId"))}
    record["ts"] = _timestamp(message, now)
    record["profileData"] = {}
    token = _push_token(message, anonymous_id)
    return [record] if token is None else [record, token]


def transform(
    message: Mapping[str, Any], destination: Destination, now: float, stats: TransformStats | None = None
) -> list[Record] | Skip | Invalid | Delete:
    """The CleverTap records of one Segment ``message`` for ``destination``; see the module docstring.

    ``now`` (epoch seconds) is the timestamp of a message without a usable one; ``stats``, when given,
    counts the keys dropped and the values truncated.

    The checks come in the rules' order, each written so that the common message (a dict, string ids, a track,
    identify, page or screen) passes it with a class test or a lookup; an alias or a group branches off after the
    ids (:func:`_alias_or_group`), odd ids go through :func:`~worker.core.messages.identifier`.
    """
    if message.__class__ is not dict and not isinstance(message, Mapping):
        return Invalid("message: must be a JSON object")
    kind: Any = message.get("type")
    record_type = _RECORD_TYPES.get(kind) if kind.__class__ is str else _record_type(kind)
    if record_type is None:
        return _invalid_kind(kind)
    user_id = message.get("userId")
    if user_id.__class__ is not str or not user_id:  # (a non-empty string as is)
        user_id = None if user_id is None else identifier(user_id)
    anonymous_id = message.get("anonymousId")
    if anonymous_id.__class__ is not str or not anonymous_id:  # (a non-empty string as is)
        anonymous_id = None if anonymous_id is None else identifier(anonymous_id)
    if user_id is None and anonymous_id is None:
        return Invalid(_IDS_REQUIRED)
    event = None
    if kind == "track":
        event = message.get("event")
        if (event.__class__ is not str and not isinstance(event, str)) or not event:
            return Invalid("event: required (a non-empty string)")
    elif not record_type:
        return _alias_or_group(message, kind, destination, user_id=user_id, anonymous_id=anonymous_id, now=now)
    integrations = message.get("integrations")
    if integrations is not None and turned_off(integrations):
        return Skip("disabled_by_integrations")
    if event is not None and event == destination.delete_event_name and asks_deletion(message, destination):
        return Delete.of(user_id, anonymous_id, object_ids=destination.send_anonymous_id_as_object_id)

    record: Record = {"type": record_type}
    if not destination.send_anonymous_id_as_object_id:
        record["identity"] = user_id or anonymous_id
    else:
        if user_id is not None:
            record["identity"] = user_id
        if anonymous_id is not None:
            record["objectId"] = anonymous_id
    stamp = message.get("timestamp")  # _timestamp's first field, inlined
    seconds = None if stamp is None else epoch_seconds(stamp)
    record["ts"] = _timestamp(message, now) if seconds is None else seconds

    if event is not None:
        properties = message.get("properties")
        if properties.__class__ is not dict:
            properties = _object(properties)
        if event == CHARGED_SOURCE:
            record["evtName"], record["evtData"] = "Charged", _charged(properties, stats)
        else:
            record["evtName"], record["evtData"] = truncate(event, stats), clean(properties, stats)
    elif kind == "identify":
        record["profileData"] = profile(_identify_traits(message), destination.profile_keys, stats)
    else:
        data = clean(_object(message.get("properties")), stats)
        if kind == "page":
            record["evtName"] = destination.page_event_name
            data.update(clean({"name": message.get("name"), "category": message.get("category")}, stats))
        else:
            record["evtName"] = destination.screen_event_name
            data.update(clean({"name": message.get("name")}, stats))
        record["evtData"] = data

    context = message.get("context")  # the token record needs context.device: most messages have none
    if anonymous_id is not None and context is not None and (context.__class__ is not dict or "device" in context):
        token = _push_token(message, anonymous_id)
        if token is not None:
            return [record, token]
    return [record]
