"""``ctrelay transform``: what the relay would send to CleverTap for Segment messages read on stdin.

Stdin holds one message, a Segment batch body (``{"batch": [...]}``), a JSON array of messages, or JSON
lines (each line any of those). Each message is checked against the wire contract
(:func:`worker.messages.parse`) and transformed (:func:`worker.transform.transform`); one JSON line per
message is printed: ``{"records": [...]}``, ``{"skipped": "<reason>"}`` or ``{"invalid": "<reason>"}``.
Input that is not JSON is an error naming the line, exit status 2, and nothing is printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from worker.errors import ConfigError, MessageError

EXIT_BAD_INPUT = 2


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
    from worker.messages import parse
    from worker.transform import Delete, Invalid, Skip, transform

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


def transform_command(
    region: Annotated[
        str | None, typer.Option(help="CleverTap region (eu1, in1, us1, ...); where records would go")
    ] = None,
    no_object_id: Annotated[
        bool, typer.Option("--no-object-id", help="send_anonymous_id_as_object_id = false")
    ] = False,
    settings: Annotated[
        Path | None,
        typer.Option(help="a destination's settings (TOML): one table, or a destinations file with a single entry"),
    ] = None,
) -> None:
    """Print what the relay would send to CleverTap for the Segment messages on stdin (one JSON line each)."""
    from worker.destinations import Destination, load_single_destination, normalize_region
    from worker.settings import environment

    try:
        destination = (
            load_single_destination(settings, env=environment())
            if settings is not None
            else Destination(account_id="preview")
        )
        update: dict[str, Any] = {}
        if region is not None:
            update["region"] = normalize_region(region)
        if no_object_id:
            update["send_anonymous_id_as_object_id"] = False
        destination = destination.model_copy(update=update)
        messages = read_messages(sys.stdin.buffer.read())
    except (ConfigError, MessageError, ValueError) as exc:
        typer.echo(f"ctrelay transform: {'--region: ' if isinstance(exc, ValueError) else ''}{exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    out = sys.stdout.buffer
    for outcome in preview(messages, destination, time.time()):
        out.write(orjson.dumps(outcome) + b"\n")
    out.flush()
