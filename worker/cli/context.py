"""What the operator commands (``ctrelay dlq``, ``ctrelay users``) share: the settings, a Redis client, and one way
to fail: a one-line ``error: ...`` on stderr and an exit status (2: bad arguments, settings or Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import redis

    from worker.core.keys import Keys
    from worker.core.settings import Settings

REDIS_TIMEOUT_S = 30.0
"""How long a command waits for one Redis answer before it gives up (a hung Redis is an error, not a hang)."""
EXIT_BAD_INPUT = 2


def group(name: str, help: str) -> typer.Typer:
    """A ``ctrelay`` command group (or the top-level command), configured alike: help without arguments, no shell
    completion, plain tracebacks."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@dataclass
class Session:
    """An operator command's settings, key names and Redis client."""

    settings: Settings
    keys: Keys
    client: redis.Redis


@contextmanager
def session() -> Iterator[Session]:
    """The settings and a Redis client for one command; what goes wrong inside becomes a clean one-line error."""
    import redis
    from pydantic import ValidationError

    from worker.core.errors import RelayError
    from worker.core.keys import Keys
    from worker.core.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(f"settings: {exc}") from None
    from worker.store.streams import claim_partitions

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=REDIS_TIMEOUT_S)
    try:
        claim_partitions(client, Keys(settings.redis_prefix), settings.partitions)  # another count: refuse
        yield Session(settings, Keys(settings.redis_prefix), client)
    except RelayError as exc:
        raise fail(str(exc)) from None
    except redis.RedisError as exc:
        raise fail(f"Redis ({settings.redis_url.rpartition('@')[2]}): {exc}") from None
    except BrokenPipeError:  # `ctrelay dlq export | head`: the reader has gone, nothing to report
        raise typer.Exit(0) from None
    except OSError as exc:
        raise fail(f"{exc.filename or 'output'}: {exc.strerror or exc}") from None
    finally:
        client.close()
