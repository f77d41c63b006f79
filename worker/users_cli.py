"""``ctrelay users``: delete a user (right to be forgotten), lift a suppression, list suppressed users.
Parsing and printing only; the work is in :mod:`worker.users`.

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

if TYPE_CHECKING:
    import redis

    from worker.destinations import Destination
    from worker.queue import Keys
    from worker.settings import Settings

users = typer.Typer(
    name="users",
    help="Delete users from CleverTap (and suppress their queued and new messages); lift or list suppressions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _context(write_key: str) -> Iterator[Context]:
    import redis
    from pydantic import ValidationError

    from worker.destinations import load_destinations
    from worker.errors import RelayError
    from worker.queue import Keys
    from worker.settings import Settings, environment
    from worker.users import find_destination

    try:
        settings = Settings()
    except ValidationError as exc:
        raise _fail(f"settings: {exc}") from None
    try:
        destinations = load_destinations(settings.destinations, env=environment(), require_passcode=False)
        destination = find_destination(destinations, write_key)
    except RelayError as exc:
        raise _fail(str(exc)) from None
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        yield Context(settings, client, Keys(settings.redis_prefix), destination)
    except RelayError as exc:
        raise _fail(str(exc)) from None
    except redis.RedisError as exc:
        raise _fail(f"Redis ({settings.redis_url.rpartition('@')[2]}): {exc}") from None
    finally:
        client.close()


def _json(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@users.command()
def delete(destination: DestinationOpt, user_id: UserId = None, anonymous_id: AnonymousId = None) -> None:
    """Delete a user's CleverTap profile; drop their queued, retried and new messages for the suppression window."""
    from worker.dlq import replay_producer
    from worker.users import delete_user

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
    from worker.users import unsuppress as lift

    with _context(destination) as ctx:
        removed = lift(ctx.client, ctx.keys, ctx.destination, user_id=user_id, anonymous_id=anonymous_id)
        typer.echo(_json({"unsuppressed": removed}))
        if not removed:
            typer.echo("that user was not suppressed", err=True)
            raise typer.Exit(1)


@users.command("list")
def list_(destination: DestinationOpt) -> None:
    """The destination's suppressed users (JSON lines: kind, id, until, at, via), oldest first."""
    from worker.users import suppressed

    with _context(destination) as ctx:
        for entry in suppressed(ctx.client, ctx.keys, ctx.destination, time.time()):
            typer.echo(_json(entry))
