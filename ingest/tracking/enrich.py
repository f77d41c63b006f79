"""What ingest adds to a valid message. Pure: the clock is passed in.

- ``messageId`` when missing (a given one is kept);
- ``receivedAt``: when ingest received the request;
- a batch's top-level ``context`` and ``integrations`` deep-merged into each item (the item wins;
  both are bounded in depth before, see :mod:`ingest.body`, so the merge's recursion is too);
- ``context.ctrelay`` dropped: only the relay writes it (the mark of an operator's deletion,
  :mod:`worker.transform.deletions`), so a client cannot forge it;
- clock-skew correction for client-library traffic:
  ``timestamp = receivedAt - (sentAt - originalTimestamp)``, the client's own value kept as
  ``originalTimestamp``; not for webhooks (Segment already corrected those). A malformed or
  missing timestamp falls back to ``receivedAt``.

What is the same for every message of a request (its ``receivedAt`` text, its ``sentAt`` parsed) is computed once,
on its :class:`Request`; the ``receivedAt`` text once per millisecond, for the requests received in it.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from worker.transform.deletions import MARK


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds (truncated) and a ``Z``: ``2026-11-28T21:00:00.123Z``.

    What ``isoformat(timespec="milliseconds")`` writes, from orjson's RFC 3339 text (a quarter of the CPU):
    ``"YYYY-MM-DDTHH:MM:SSZ"`` when the microseconds are 0, else ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"``."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    text = orjson.dumps(moment, option=orjson.OPT_UTC_Z)
    if len(text) == 22:
        return text[1:20].decode() + ".000Z"
    return text[1:24].decode() + "Z"


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 string as an aware datetime (naive means UTC), or None when it is not one."""
    if not isinstance(value, str) or not value or len(value) > 64:  # ISO 8601 needs ~35 characters at most
        return None
    return _parse_text(value)


@functools.lru_cache(maxsize=256)
def _parse_text(value: str) -> datetime | None:
    """Cached: every item of a batch shares the batch's ``sentAt``."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two objects key by key; ``own`` wins, nested objects are merged, ``base`` is not changed."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        merged[key] = merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


_MILLISECOND = timedelta(milliseconds=1)
_LAST = datetime.max.replace(microsecond=999000, tzinfo=UTC)


class _Received:
    """The text of the last millisecond a request was received in: the requests of one millisecond (several under
    load) share it, each after two comparisons instead of :func:`format_time` (~0.9 µs). The millisecond and its
    text are one tuple, replaced whole, so that a reader never pairs one millisecond with another's text."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        start = datetime.min.replace(tzinfo=UTC)
        self.kept = (start, start, format_time(start))

    def text(self, received: datetime) -> str:
        """``format_time(received)``."""
        if received.tzinfo is not UTC:
            return format_time(received)
        start, end, written = self.kept
        if start <= received < end:
            return written
        written = format_time(received)
        start = received.replace(microsecond=received.microsecond // 1000 * 1000)
        if start < _LAST:  # (the last millisecond of datetime's range has no end: not kept)
            self.kept = (start, start + _MILLISECOND, written)
        return written


_received = _Received()


class Request:
    """What one HTTP request gives every message it carries; what is the same for all of them is computed once,
    here (a plain slots class: a frozen dataclass's ``__init__`` costs a single call ~1 µs)."""

    __slots__ = ("context", "correct_skew", "integrations", "received", "received_text", "sent", "sent_at")

    def __init__(
        self,
        received: datetime,
        sent_at: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
        correct_skew: bool = True,  # (positional too: a keyword to a class call costs ~0.1 µs)
    ) -> None:
        self.received = received
        self.sent_at = sent_at
        """The batch's ``sentAt`` (an item's own wins)."""
        self.context = context
        self.integrations = integrations
        self.correct_skew = correct_skew
        self.received_text = _received.text(received)
        self.sent = None if sent_at is None else parse_time(sent_at)
        """``sent_at`` parsed (``None``: absent or not a time), once for the request's messages."""


def _timestamp(message: dict[str, Any], request: Request, received_text: str) -> str:
    """A webhook's ``timestamp``: its own when it is a time (Segment corrected it), else ``receivedAt``."""
    return message["timestamp"] if parse_time(message.get("timestamp")) is not None else received_text


def enrich(message: dict[str, Any], request: Request, received_text: str) -> dict[str, Any]:
    """Add what ingest adds to a parsed message (in place) and return it (``received_text``: the request's
    ``received`` as :func:`format_time` writes it)."""
    get = message.get
    if not get("messageId"):
        message["messageId"] = str(uuid.uuid4())
    if request.context is not None:
        own = get("context")
        message["context"] = merge(request.context, own) if isinstance(own, dict) else request.context
    context = get("context")
    # (a copy: the batch's context may be shared by its items)
    if context is not None and (context.__class__ is dict or isinstance(context, dict)) and MARK in context:
        message["context"] = {key: value for key, value in context.items() if key != MARK}
    if request.integrations is not None:
        own = get("integrations")
        message["integrations"] = merge(request.integrations, own) if isinstance(own, dict) else request.integrations
    sent_at = request.sent_at
    if sent_at is not None and "sentAt" not in message:
        message["sentAt"] = sent_at
    message["receivedAt"] = received_text
    if not request.correct_skew:
        message["timestamp"] = _timestamp(message, request, received_text)
        message.pop("writeKey", None)
        return message
    # timestamp = receivedAt - (sentAt - originalTimestamp), the client's own kept as originalTimestamp
    original = message["originalTimestamp"] if "originalTimestamp" in message else get("timestamp")
    stamp = received_text
    if original is not None:
        message["originalTimestamp"] = original
        client = parse_time(original)
        if client is not None:
            text = get("sentAt")
            sent = request.sent if text is sent_at else parse_time(text)  # (the request's, parsed once)
            try:
                stamp = format_time(client if sent is None else request.received - (sent - client))
            except (OverflowError, ValueError):  # out of datetime's range once shifted (year 1 or 9999): malformed
                stamp = received_text
    message["timestamp"] = stamp
    message.pop("writeKey", None)
    return message
