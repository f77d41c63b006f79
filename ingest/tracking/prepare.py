"""One request's messages, one by one: validated, enriched, encoded, bounded, made stream entries.

What :mod:`ingest.tracking.routes` writes; a single pass over each message. The rules are those of
:func:`worker.core.messages.parse` (validation and normalization) and :func:`ingest.tracking.enrich.enrich` (what
ingest adds); the message is enriched in place, encoded once, that encoding bounded and written as is.

**The plain message**, as almost every client sends it (call type known, ids strings, objects objects: nothing
that ``parse`` would change or refuse, :func:`_plain`), takes one pass written for speed: its checks without a
call per field, the client's dict itself (its nulls dropped) instead of a copy, the enrichment's steps in
``enrich``'s order inline, with the request's ``sentAt`` parsed once per request. Every other message (and every
webhook's) goes through ``parse`` and ``enrich`` themselves, so that a refusal and its reason, the
normalizations and the bytes written are theirs. tests/ingest/test_prepare_fast.py compares the two under
hypothesis (entries byte for byte, key order included, refusals and their reasons).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from ingest import body
from ingest.tracking.enrich import Request as Enrichment
from ingest.tracking.enrich import enrich, format_time, merge, parse_time
from worker.core.destinations import Destination
from worker.core.errors import MessageError, RequestError
from worker.core.messages import MAX_MESSAGE_ID, parse
from worker.core.settings import Settings
from worker.store.producer import Entry
from worker.transform.deletions import MARK, asks_deletion

Kind = Literal["single", "batch", "webhook"]


class Outcome:
    """What became of one request's messages (a plain class: a dataclass's factories cost a single call ~0.5 µs)."""

    __slots__ = ("deletions", "entries", "error", "rejected", "types")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.types: list[str] = []
        self.rejected: dict[str, int] = {}
        """Refused items, by reason."""
        self.deletions: dict[int, dict[str, Any]] = {}
        """Tracks named the destination's ``delete_event_name``, by entry index: their users are suppressed with the
        write of their entry (same script), when it is not a duplicate."""
        self.error: RequestError | None = None
        """Why the last refused item was refused (a single call answers it as a 400)."""

    def refuse(self, reason: str, error: RequestError) -> None:
        """One item refused for ``reason``, with the answer ``error`` a single call gives."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.error = error


_OBJECTS = (dict, type(None))
_TEXTS = (str, type(None))
_BRACKETS = b"{["
_UNSET = object()


def _plain(message: dict[str, Any]) -> bool:
    """Whether ``parse`` would accept ``message`` (a dict without nulls, its type set) and return it unchanged:
    a known call type whose fields are of the types the rules ask (exactly ``str`` and ``dict``: no id to coerce
    from a number), the required ones non-empty, and a non-empty ``userId`` or ``anonymousId``. ``False`` says
    only that the plain pass does not decide: ``parse`` does."""
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
    call = get("type")
    if call == "track":
        event = get("event")
        return event.__class__ is str and event != "" and get("properties").__class__ in _OBJECTS
    if call == "identify":
        return get("traits").__class__ in _OBJECTS
    if call in ("page", "screen"):
        return (
            get("name").__class__ in _TEXTS
            and get("category").__class__ in _TEXTS
            and get("properties").__class__ in _OBJECTS
        )
    if call == "group":
        return bool(get("groupId")) and get("traits").__class__ in _OBJECTS
    if call == "alias":
        return bool(user) and bool(get("previousId"))
    return False


def prepare(
    items: list[Any],
    top: dict[str, Any] | None,
    kind: Kind,
    implied_type: str | None,
    destination: Destination,
    *,
    settings: Settings,
    entry: Callable[[str, str, bytes], Entry],
    digest: str | None,
    flat: bool,
) -> Outcome:
    """Validate, enrich, encode and bound each item (``digest``: a webhook body's, for the messageIds it lacks;
    ``entry``: :meth:`~worker.store.producer.Producer.maker` of the destination's write key).

    The nesting bound is checked on the encoded message (its brackets, as :func:`ingest.body.shallow` counts
    them, then a walk only when there are more than the bound); nothing before recurses past it: orjson parses at
    most 1,024 levels, validation does not recurse, the merge recurses no deeper than the batch's (bounded)
    context, and an encoding refused for its depth (past orjson's 254 levels) is ``too_deep`` too. ``flat``: the
    whole body has no more brackets than the bound, so no message can pass it (enrichment adds strings only, the
    merge no level): not checked."""
    received = datetime.now(UTC)
    sent_at = top.get("sentAt") if top is not None and isinstance(top.get("sentAt"), str) else None
    context = top.get("context") if top is not None else None
    integrations = top.get("integrations") if top is not None else None
    enrichment: Enrichment | None = None  # (made for the first message that is not plain)
    received_text = format_time(received)
    limit = settings.max_message_bytes
    outcome = Outcome()
    depth = settings.max_depth
    delete_event = destination.delete_event_name
    entries, types = outcome.entries, outcome.types
    fast = kind != "webhook"
    last_sent: object = _UNSET  # the last sentAt text parsed, and its time
    sent: datetime | None = None
    dumps, translate = orjson.dumps, bytes.translate
    for index, raw in enumerate(items):
        message: dict[str, Any] = raw
        plain = fast and raw.__class__ is dict
        if plain:
            if None in raw.values():
                message = {key: value for key, value in raw.items() if value is not None}
            if implied_type is not None:
                message["type"] = implied_type
            plain = _plain(message)
        if plain:  # enrich()'s steps, in its order, for a message whose fields are known to be of their types
            get = message.get
            if not get("messageId"):
                message["messageId"] = str(uuid.uuid4())
            if context is not None:
                own = get("context")
                message["context"] = context if own is None else merge(context, own)
            found = get("context")
            if found is not None and MARK in found:  # a copy: the batch's context may be shared by its items
                message["context"] = {key: value for key, value in found.items() if key != MARK}
            if integrations is not None:
                own = get("integrations")
                message["integrations"] = integrations if own is None else merge(integrations, own)
            if sent_at is not None and "sentAt" not in message:
                message["sentAt"] = sent_at
            message["receivedAt"] = received_text
            original = get("originalTimestamp")
            if original is None:
                original = get("timestamp")
            stamp = received_text
            if original is not None:
                message["originalTimestamp"] = original
                client = parse_time(original)
                if client is not None:
                    text = get("sentAt")
                    if text is not last_sent:
                        last_sent, sent = text, parse_time(text)
                    try:
                        stamp = format_time(client if sent is None else received - (sent - client))
                    except (OverflowError, ValueError):  # out of datetime's range once shifted: malformed
                        stamp = received_text
            message["timestamp"] = stamp
            message.pop("writeKey", None)
        else:
            try:
                message = parse(raw, implied_type)
            except MessageError as exc:
                outcome.refuse("invalid_message", RequestError(400, "invalid_message", exc.reason))
                continue
            if kind == "webhook":
                message.pop("writeKey", None)
                if not message.get("messageId"):
                    message["messageId"] = f"webhook-{digest}-{index}"
            if enrichment is None:
                enrichment = Enrichment(received, sent_at, context, integrations, correct_skew=kind != "webhook")
            enrich(message, enrichment, received_text)
        try:
            encoded = dumps(message)
            deep = (
                not flat
                and len(encoded) - len(translate(encoded, None, _BRACKETS)) > depth
                and body.too_deep(message, depth)
            )
        except orjson.JSONEncodeError as exc:  # past orjson's depth, or anything else it cannot encode
            deep = "ecursion" in str(exc)
            if not deep:
                outcome.refuse(
                    "invalid_message", RequestError(400, "invalid_message", f"message cannot be encoded: {exc}")
                )
                continue
        if deep:
            outcome.refuse("too_deep", body.deep_error(depth))
            continue
        if len(encoded) > limit:
            outcome.refuse(
                "message_too_large", RequestError(400, "message_too_large", f"message larger than {limit} bytes")
            )
            continue
        get = message.get
        if plain:
            entries.append(entry(get("userId") or message["anonymousId"], message["messageId"], encoded))
        else:
            entries.append(entry(str(get("userId") or get("anonymousId") or ""), str(message["messageId"]), encoded))
        call = message["type"]
        types.append(call)
        if call == "track" and get("event") == delete_event and asks_deletion(message, destination):
            outcome.deletions[len(entries) - 1] = message
    return outcome
