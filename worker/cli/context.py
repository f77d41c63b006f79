"""What the operator commands (``ctrelay dlq``, ``ctrelay users``) share: the settings, a Redis client, one way
to fail (a one-line ``error: ...`` on stderr and an exit status: 2 bad arguments, settings or Redis) and one way to
be interrupted.

**Signals.** Every ``ctrelay`` command handles SIGINT and SIGTERM itself (:func:`handle_interrupts`, installed
before any command runs): either signal raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so a
command stops where it is, cleans up and exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). This holds
even when the command was started with SIGINT ignored (a background job, ``nohup``, some CI wrappers), where
Python on its own would never raise ``KeyboardInterrupt``. The long-running commands (``worker``, ``ingest``,
``sandbox``, ``dev``) replace these handlers with their own graceful shutdown.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import redis

    from worker.core.keys import Keys
    from worker.core.settings import Settings

REDIS_TIMEOUT_S = 30.0
"""How long a command waits for one Redis answer before it gives up (a hung Redis is an error, not a hang)."""
EXIT_BAD_INPUT = 2


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (exit status ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """The exit status for an interruption: ``128 + signum`` (a plain KeyboardInterrupt is a SIGINT: 130)."""
    return interrupt.exit_code if isinstance(interrupt, Interrupted) else 128 + signal.SIGINT


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def handle_interrupts() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, whatever was inherited (SIG_IGN too)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


def group(name: str, help: str) -> typer.Typer:
    """A ``ctrelay`` command group (or the top-level command), configured alike: help without arguments, no shell
    completion, plain tracebacks."""
    return _Command(name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


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
    from worker.store.connections import Target, close, connect

    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(f"settings: {exc}") from None
    from worker.store.streams import claim_partitions

    try:
        client = connect(settings, timeout_s=REDIS_TIMEOUT_S, connect_timeout_s=5)  # a cluster client asks at once
    except redis.RedisError as exc:
        raise fail(f"Redis ({Target.of(settings).describe()}): {exc}") from None
    try:
        claim_partitions(client, Keys(settings.redis_prefix), settings.partitions)  # another count: refuse
        yield Session(settings, Keys(settings.redis_prefix), client)
    except RelayError as exc:
        raise fail(str(exc)) from None
    except redis.RedisError as exc:
        raise fail(f"Redis ({Target.of(settings).describe()}): {exc}") from None
    except BrokenPipeError:  # `ctrelay dlq export | head`: the reader has gone, nothing to report
        raise typer.Exit(0) from None
    except OSError as exc:
        raise fail(f"{exc.filename or 'output'}: {exc.strerror or exc}") from None
    finally:
        close(client)


class _Command(typer.Typer):
    """A command group whose run (``ctrelay ...`` itself) ends on bad settings or a bad destinations file, in any
    subcommand (``worker``, ``ingest``, ``status``, ``dlq``, ``users``, ...), with one line ``error: ...`` and exit
    status 2, never a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from worker.core.errors import ConfigError

        try:
            return super().__call__(*args, **kwargs)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        except ValidationError as exc:  # the settings (environment) themselves
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            typer.echo(f"error: settings: {problems}", err=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
