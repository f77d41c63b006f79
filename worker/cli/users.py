"""``ctrelay users``: delete a user (right to be forgotten), lift a suppression, list suppressed users.
Parsing and printing only; the work is in :mod:`worker.ops.users`.

Exit status: 0 done, 1 nothing to do (``unsuppress`` of a user who was not suppressed), 2 bad arguments,
settings or Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.context import group, session

if TYPE_CHECKING:
    import redis

    from worker.core.destinations import Destination
    from worker.core.keys import Keys
    from worker.core.settings import Settings

users = group(
    "users", "Delete users from CleverTap (and suppress their queued and new messages); lift or list suppressions."
)

DestinationOpt = Annotated[str, typer.Option("--destination", help="the destination's write key")]
UserId = Annotated[str | None, typer.Option("--user-id", help="the user's userId (CleverTap identity)")]
AnonymousId = Annotated[
    str | None, typer.Option("--anonymous-id", help="the user's anonymousId (CleverTap objectId / guid)")
]


@dataclass
class Context:
    settings: Settings
    client: redis.Redis
    keys: Keys
    destination: Destination


@contextmanager
def _context(write_key: str) -> Iterator[Context]:
    from worker.core.settings import load
    from worker.ops.users import find_destination

    with session() as ctx:
        destinations = load(ctx.settings, require_passcode=False).destinations
        destination = find_destination(destinations, write_key)
        yield Context(ctx.settings, ctx.client, ctx.keys, destination)


def _json(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@users.command()
def delete(destination: DestinationOpt, user_id: UserId = None, anonymous_id: AnonymousId = None) -> None:
    """Delete a user's CleverTap profile; drop their queued, retried and new messages for the suppression window."""
    from worker.ops.deadletters import replay_producer
    from worker.ops.users import delete_user

    with _context(destination) as ctx:
        deletion = delete_user(
            ctx.client,
            ctx.keys,
            replay_producer(ctx.keys, ctx.settings.partitions),
            ctx.destination,
            user_id=user_id,
            anonymous_id=anonymous_id,
            window_s=ctx.settings.suppression_window_s,
            via="cli",
        )
        typer.echo(_json(deletion.to_dict()))
        typer.echo(
            f"deletion queued ({deletion.message_id}); suppressed until {_when(deletion.suppressed_until)}", err=True
        )


@users.command()
def unsuppress(destination: DestinationOpt, user_id: UserId = None, anonymous_id: AnonymousId = None) -> None:
    """Lift a deleted user's suppression: their new messages are delivered again."""
    from worker.ops.users import unsuppress as lift

    with _context(destination) as ctx:
        removed = lift(ctx.client, ctx.keys, ctx.destination, user_id=user_id, anonymous_id=anonymous_id)
        typer.echo(_json({"unsuppressed": removed}))
        if not removed:
            typer.echo("that user was not suppressed", err=True)
            raise typer.Exit(1)


@users.command("list")
def list_(destination: DestinationOpt) -> None:
    """The destination's suppressed users (JSON lines: kind, id, until, at, via), oldest first."""
    from worker.ops.users import suppressed

    with _context(destination) as ctx:
        for entry in suppressed(ctx.client, ctx.keys, ctx.destination, time.time()):
            typer.echo(_json(entry))
