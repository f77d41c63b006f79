"""One request's messages, one by one: validated, enriched, encoded, bounded, made stream entries.

What :mod:`ingest.tracking.routes` writes; a single pass over each message (checked and normalized by
:func:`worker.core.messages.parse` into its own dict, enriched in place, encoded once, that encoding bounded and
written as is).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from ingest import body
from ingest.tracking.enrich import Request as Enrichment
from ingest.tracking.enrich import enrich
from worker.core.destinations import Destination
from worker.core.errors import MessageError, RequestError
from worker.core.messages import parse
from worker.core.settings import Settings
from worker.store.producer import Entry
from worker.transform.deletions import asks_deletion

Kind = Literal["single", "batch", "webhook"]


@dataclass
class Outcome:
    """What became of one request's messages."""

    entries: list[Entry] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rejected: Tally[str] = field(default_factory=Tally)
    deletions: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Tracks named the destination's ``delete_event_name``, by entry index: their users are suppressed with the
    write of their entry (same script), when it is not a duplicate."""
    error: RequestError | None = None
    """Why the last refused item was refused (a single call answers it as a 400)."""


def prepare(
    items: list[Any],
    top: dict[str, Any] | None,
    kind: Kind,
    implied_type: str | None,
    destination: Destination,
    *,
    settings: Settings,
    entry: Callable[[str, dict[str, Any], bytes], Entry],
    digest: str | None,
    flat: bool,
) -> Outcome:
    """Validate, enrich, encode and bound each item (``digest``: a webhook body's, for the messageIds it lacks).

    The nesting bound is checked on the encoded message (its brackets, then a walk only when there are more
    than the bound); nothing before recurses past it: orjson parses at most 1,024 levels, validation does
    not recurse, the merge recurses no deeper than the batch's (bounded) context, and an encoding refused
    for its depth (past orjson's 254 levels) is ``too_deep`` too. ``flat``: the whole body has no more brackets
    than the bound, so no message can pass it (enrichment adds strings only, the merge no level): not checked."""
    received = datetime.now(UTC)
    enrichment = Enrichment(
        received=received,
        sent_at=top.get("sentAt") if top is not None and isinstance(top.get("sentAt"), str) else None,
        context=top.get("context") if top is not None else None,
        integrations=top.get("integrations") if top is not None else None,
        correct_skew=kind != "webhook",
    )
    received_text = enrichment.received_text
    limit = settings.max_message_bytes
    outcome = Outcome()
    write_key = destination.write_key
    depth = settings.max_depth
    delete_event = destination.delete_event_name
    entries, types = outcome.entries, outcome.types
    for index, raw in enumerate(items):
        try:
            message = parse(raw, implied_type)
        except MessageError as exc:
            outcome.rejected["invalid_message"] += 1
            outcome.error = RequestError(400, "invalid_message", exc.reason)
            continue
        if kind == "webhook":
            message.pop("writeKey", None)
            if not message.get("messageId"):
                message["messageId"] = f"webhook-{digest}-{index}"
        enrich(message, enrichment, received_text)
        try:
            encoded = orjson.dumps(message)
            deep = not flat and not body.shallow(encoded, depth) and body.too_deep(message, depth)
        except orjson.JSONEncodeError as exc:  # past orjson's depth, or anything else it cannot encode
            deep = "ecursion" in str(exc)
            if not deep:
                outcome.rejected["invalid_message"] += 1
                outcome.error = RequestError(400, "invalid_message", f"message cannot be encoded: {exc}")
                continue
        if deep:
            outcome.rejected["too_deep"] += 1
            outcome.error = body.deep_error(depth)
            continue
        if len(encoded) > limit:
            outcome.rejected["message_too_large"] += 1
            outcome.error = RequestError(400, "message_too_large", f"message larger than {limit} bytes")
            continue
        entries.append(entry(write_key, message, encoded))
        call = message["type"]
        types.append(call)
        if call == "track" and message.get("event") == delete_event and asks_deletion(message, destination):
            outcome.deletions[len(entries) - 1] = message
    return outcome
