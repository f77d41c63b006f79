"""``ctrelay partitions``: the partition count stored in Redis, and changing it on an empty queue."""

from __future__ import annotations

import typer

from worker.cli.context import fail


def partitions_command(new: int | None) -> None:
    """Print the stored count; with ``new``, store it (refused unless the queue is empty and no drain runs)."""
    import redis
    from pydantic import ValidationError

    from worker.core.errors import ConfigError
    from worker.core.keys import Keys
    from worker.core.settings import Settings
    from worker.store.connections import Target, close, connect
    from worker.store.streams import change_partitions

    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(f"settings: {exc}") from None
    keys = Keys(settings.redis_prefix)
    try:
        client = connect(settings, timeout_s=30, connect_timeout_s=5)  # a cluster client asks a node at once
    except redis.RedisError as exc:
        raise fail(f"Redis ({Target.of(settings).describe()}): {exc}") from None
    try:
        if new is None:
            stored = client.get(keys.partitions())
            typer.echo(
                f"{int(stored)}"
                if stored is not None
                else f"not stored yet (CTRELAY_PARTITIONS: {settings.partitions})"
            )
            return
        old = change_partitions(client, keys, new)
        typer.echo(f"partitions: {old} -> {new}; start every process with CTRELAY_PARTITIONS={new}")
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except redis.RedisError as exc:
        raise fail(f"Redis ({Target.of(settings).describe()}): {exc}") from None
    finally:
        close(client)
