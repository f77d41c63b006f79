"""One request's messages, one by one: validated, enriched, encoded, bounded, made stream entries.

What :mod:`ingest.tracking.routes` writes; a single pass over each message: checked and normalized by
:func:`worker.core.messages.parse` (the decoded body is ingest's to give away, so ``owned``: the common message is
the client's dict itself, no copy), enriched in place by :func:`ingest.tracking.enrich.enrich`, encoded once, that
encoding bounded and written as is. The rules are theirs alone.
"""

from __future__ import annotations

from collections.abc import Callable
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


_BRACKETS = b"{["


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
    enrichment = Enrichment(
        received,
        top.get("sentAt") if top is not None and isinstance(top.get("sentAt"), str) else None,
        top.get("context") if top is not None else None,
        top.get("integrations") if top is not None else None,
        kind != "webhook",  # correct_skew
    )
    received_text = enrichment.received_text
    limit = settings.max_message_bytes
    outcome = Outcome()
    depth = settings.max_depth
    delete_event = destination.delete_event_name
    entries, types = outcome.entries, outcome.types
    webhook = kind == "webhook"
    dumps, translate = orjson.dumps, bytes.translate
    for index, raw in enumerate(items):
        try:
            message = parse(raw, implied_type, owned=True)
        except MessageError as exc:
            outcome.refuse("invalid_message", RequestError(400, "invalid_message", exc.reason))
            continue
        if webhook:
            message.pop("writeKey", None)
            if not message.get("messageId"):
                message["messageId"] = f"webhook-{digest}-{index}"
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
        message_id = message["messageId"]
        # (parse's contract: userId and anonymousId strings when present, one of them non-empty; a messageId
        # may be a number, kept as sent)
        entries.append(
            entry(
                get("userId") or message["anonymousId"],
                message_id if message_id.__class__ is str else str(message_id),
                encoded,
            )
        )
        call = message["type"]
        types.append(call)
        if call == "track" and get("event") == delete_event and asks_deletion(message, destination):
            outcome.deletions[len(entries) - 1] = message
    return outcome
