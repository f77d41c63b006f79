"""``ctrelay transform``: print what the relay would send to CleverTap for the Segment messages on stdin.

Parsing and printing only; reading and previewing are :mod:`worker.ops.preview`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from worker.core.errors import ConfigError, MessageError
from worker.ops.preview import preview, read_messages

EXIT_BAD_INPUT = 2


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
    from worker.core.destinations import Destination, load_single_destination, normalize_region
    from worker.core.settings import environment

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
