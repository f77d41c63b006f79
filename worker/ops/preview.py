"""What the relay would send to CleverTap for Segment messages (``ctrelay transform``), without Redis or network.

Stdin holds one message, a Segment batch body (``{"batch": [...]}``), a JSON array of messages, or JSON
lines (each line any of those). Each message is checked against the wire contract
(:func:`worker.core.messages.parse`) and transformed (:func:`worker.transform.records.transform`); one JSON line per
message is printed: ``{"records": [...]}``, ``{"skipped": "<reason>"}``, ``{"invalid": "<reason>"}``, or
``{"delete": {"type": "delete", "identity": [...], "guid": [...]}}`` for a user deletion.
Input that is not JSON is an error naming the line, exit status 2, and nothing is printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from worker.core.errors import MessageError


def _items(document: Any) -> list[Any]:
    """The messages in one JSON document: a batch body's items, an array's elements, or the document."""
    if isinstance(document, dict) and isinstance(document.get("batch"), list):
        return list(document["batch"])
    if isinstance(document, list):
        return document
    return [document]


def read_messages(data: bytes) -> list[Any]:
    """Every message in ``data`` (see the module docstring); raise :class:`MessageError` naming the bad line."""
    try:
        return _items(orjson.loads(data)) if data.strip() else []
    except orjson.JSONDecodeError as whole:
        lines = data.splitlines()
        first = next((line for line in lines if line.strip()), b"")
        try:
            orjson.loads(first)
        except orjson.JSONDecodeError:
            raise MessageError(f"stdin line {whole.lineno}: invalid JSON: {whole.msg}") from None
    messages: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                messages.extend(_items(orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                raise MessageError(f"stdin line {number}: invalid JSON: {exc.msg}") from None
    return messages


def preview(messages: Iterable[Any], destination: Any, now: float) -> Iterator[dict[str, Any]]:
    """One outcome per message, as printed: records, skipped, invalid, or a user deletion."""
    from worker.core.messages import parse
    from worker.transform.deletions import Delete
    from worker.transform.records import Invalid, Skip, transform

    for raw in messages:
        try:
            message = parse(raw)
        except MessageError as exc:
            yield {"invalid": exc.reason}
            continue
        outcome = transform(message, destination, now)
        if isinstance(outcome, Skip | Invalid):  # an Invalid here is a contract gap between parse and transform
            yield {"skipped" if isinstance(outcome, Skip) else "invalid": outcome.reason}
        elif isinstance(outcome, Delete):
            yield {"delete": outcome.record()}
        else:
            yield {"records": outcome}
