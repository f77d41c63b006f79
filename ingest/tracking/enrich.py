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

The correction is integer arithmetic on microseconds since 0001-01-01T00:00:00Z (:func:`instant`: a time's text
read once, cached in a plain dict, cheaper than ``functools.lru_cache`` on a hit), written back by
:func:`text_of`: each second's text is made once (by :func:`format_time`, so the two cannot differ) and the
milliseconds appended from a table, instead of a ``datetime`` subtraction and :func:`format_time` (orjson) per
message. A result outside ``datetime``'s range (years 1 to 9999) is out of range as before: ``receivedAt``; a
received time not in UTC (never ingest's own clock) is corrected on datetimes, as before.
"""

from __future__ import annotations

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
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_ZERO = datetime.min.replace(tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LAST_INSTANT = (datetime.max.replace(tzinfo=UTC) - _ZERO) // _MICROSECOND
"""The last microsecond :func:`text_of` writes (9999-12-31T23:59:59.999999Z); the first is 0."""
_KEPT = 1024
"""Entries of each cache below (then it starts again empty): a batch's times, kept across its messages."""
_UNKNOWN = object()
_instants: dict[str, int | None] = {}


def instant(value: object) -> int | None:
    """:func:`parse_time` of ``value`` as microseconds since 0001-01-01T00:00:00Z (``None``: not a time); an offset
    may put it before 0 or after the last microsecond of year 9999. Cached by text: a batch's items share its
    ``sentAt``, often their ``timestamp`` too. A text that cannot be a time (empty, or longer than
    :func:`parse_time` reads) is not cached: the cache holds short keys only, whatever a client sends."""
    if (value.__class__ is not str and not isinstance(value, str)) or not value or len(value) > 64:
        return None
    found = _instants.get(value, _UNKNOWN)
    if found is _UNKNOWN:
        moment = parse_time(value)
        found = None if moment is None else (moment - _ZERO) // _MICROSECOND
        if len(_instants) >= _KEPT:
            _instants.clear()
        _instants[value] = found
    return found  # type: ignore[return-value]  # (an int or None once found)


_seconds: dict[int, str] = {}
_MILLISECONDS = tuple(f".{n:03d}Z" for n in range(1000))


def text_of(moment: int) -> str:
    """:func:`format_time` of an :func:`instant` within ``datetime``'s range (0 to ``_LAST_INSTANT``): the text of
    its second, made once (by :func:`format_time` itself) and cached, and its milliseconds from a table."""
    second, micros = divmod(moment, 1_000_000)
    prefix = _seconds.get(second)
    if prefix is None:
        prefix = format_time(_ZERO + timedelta(seconds=second))[:-5]  # (without ".000Z")
        if len(_seconds) >= _KEPT:
            _seconds.clear()
        _seconds[second] = prefix
    return prefix + _MILLISECONDS[micros // 1000]


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

    __slots__ = (
        "context",
        "correct_skew",
        "integrations",
        "received",
        "received_instant",
        "received_text",
        "sent_at",
        "sent_instant",
    )

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
        self.sent_instant = None if sent_at is None else instant(sent_at)
        """``sent_at`` as an :func:`instant` (``None``: absent or not a time), once for the request's messages."""
        self.received_instant = (received - _ZERO) // _MICROSECOND if received.tzinfo is UTC else None
        """``received`` as an :func:`instant` when it is in UTC (as ingest's clock gives it), else ``None``: the
        correction is then made on datetimes, in ``received``'s zone, as written (its range ends are that zone's)."""


def _timestamp(message: dict[str, Any], request: Request, received_text: str) -> str:
    """A webhook's ``timestamp``: its own when it is a time (Segment corrected it), else ``receivedAt``."""
    return message["timestamp"] if instant(message.get("timestamp")) is not None else received_text


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
        client = instant(original)
        if client is not None:
            text = get("sentAt")
            sent = request.sent_instant if text is sent_at else instant(text)  # (the request's, parsed once)
            received = request.received_instant
            if sent is None:
                moment: int | None = client
            elif received is not None:
                moment = received - (sent - client)
            else:  # (a received time not in UTC: on datetimes)
                moment, stamp = None, _corrected(request.received, text, original, received_text)
            if moment is not None and 0 <= moment <= _LAST_INSTANT:  # (else out of range once shifted: malformed)
                stamp = text_of(moment)
    message["timestamp"] = stamp
    message.pop("writeKey", None)
    return message


def _corrected(received: datetime, sent_at: object, original: object, received_text: str) -> str:
    """The corrected timestamp as datetimes give it, for a ``received`` time not in UTC (its zone's range ends
    apply); ``received_text`` when out of range."""
    sent, client = parse_time(sent_at), parse_time(original)
    if sent is None or client is None:  # (not so: both have instants)
        return received_text
    try:
        return format_time(received - (sent - client))
    except (OverflowError, ValueError):  # out of datetime's range once shifted (year 1 or 9999): malformed
        return received_text
