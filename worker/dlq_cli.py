"""``ctrelay dlq``: the operator's commands on the dead letters. Parsing and printing only; the work is in
:mod:`worker.dlq`.

Every command takes the filters ``--reason --code --event --type --destination --since --until --limit``
(times: epoch seconds, ISO 8601, or an age such as ``15m``, ``2h``, ``7d``; they bound the last failure).
Exit status: 0 done, 1 done with refused input (import), 2 bad arguments or settings, 130 interrupted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from worker.deadletters import DeadLetterStore, Filter
    from worker.settings import Settings

dlq = typer.Typer(
    name="dlq",
    help="Inspect, replay, purge, export and import dead letters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Reason = Annotated[
    str | None,
    typer.Option(help="invalid_message, rejected, retries_exhausted or auth_failed", show_default=False),
]
Code = Annotated[int | None, typer.Option(help="CleverTap's per-record code (e.g. 523)", show_default=False)]
Event = Annotated[str | None, typer.Option(help="the track event's name", show_default=False)]
Type = Annotated[str | None, typer.Option("--type", help="the Segment call type (track, identify, ...)")]
DestinationOpt = Annotated[str | None, typer.Option("--destination", help="the destination's write key")]
Since = Annotated[str | None, typer.Option(help="last failure at or after: epoch s, ISO 8601, or an age (2h, 7d)")]
Until = Annotated[str | None, typer.Option(help="last failure at or before (same forms as --since)")]
Limit = Annotated[int | None, typer.Option(help="at most this many letters", show_default=False)]
Ids = Annotated[list[str] | None, typer.Argument(help="letter ids", show_default=False)]
All = Annotated[bool, typer.Option("--all", help="every letter matching the filters")]
Json = Annotated[bool, typer.Option("--json", help="JSON (lines) instead of a table")]


@dataclass
class Context:
    settings: Settings
    store: DeadLetterStore
    console: Console
    errors: Console


def _fail(message: str, code: int = 2) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def _context() -> Iterator[Context]:
    import redis
    from pydantic import ValidationError
    from rich.console import Console

    from worker.deadletters import DeadLetterStore
    from worker.errors import RelayError
    from worker.queue import Keys
    from worker.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise _fail(f"settings: {exc}") from None
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    store = DeadLetterStore(client, Keys(settings.redis_prefix), settings.deadletter_retention)
    try:
        store.expire(time.time())  # retention applies before an operator looks, even when no letter came lately
        yield Context(settings, store, Console(), Console(stderr=True))
    except RelayError as exc:
        raise _fail(str(exc)) from None
    except redis.RedisError as exc:
        raise _fail(f"Redis ({settings.redis_url.rpartition('@')[2]}): {exc}") from None
    except BrokenPipeError:  # `ctrelay dlq export | head`: the reader has gone, nothing to report
        raise typer.Exit(0) from None
    except OSError as exc:
        raise _fail(f"{exc.filename or 'output'}: {exc.strerror or exc}") from None
    finally:
        client.close()


def _filter(ids: list[str] | None = None, **options: Any) -> Filter:
    from worker.dlq import make_filter

    return make_filter(now=time.time(), ids=ids or (), **options)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _json(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()


@dlq.command()
def stats(
    *,
    reason: Reason = None,
    code: Code = None,
    event: Event = None,
    type: Type = None,
    destination: DestinationOpt = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    as_json: Json = False,
) -> None:
    """Count dead letters by reason, code, event name and destination."""
    from rich.table import Table

    from worker import dlq as ops

    with _context() as ctx:
        where = _filter(
            None,
            reason=reason,
            code=code,
            event=event,
            type=type,
            destination=destination,
            since=since,
            until=until,
            limit=limit,
        )
        result = ops.stats(ctx.store, where)
        if as_json:
            ctx.console.print(_json(result.to_dict()), markup=False, highlight=False, soft_wrap=True)
            return
        table = Table(title=f"Dead letters: {result.total}", title_justify="left")
        for column in ("Reason", "Code", "Event", "Destination"):
            table.add_column(column)
        table.add_column("Count", justify="right")
        for (r, c, e, d), n in result.groups.most_common():
            table.add_row(r, "-" if c is None else str(c), e, d, str(n))
        if len(result.by_reason) > 1:
            table.add_section()
            for r, n in result.by_reason.most_common():
                table.add_row(f"{r} (all)", "", "", "", str(n))
        ctx.console.print(table)
        ctx.console.print(f"oldest {_when(result.oldest)} UTC, newest {_when(result.newest)} UTC", highlight=False)


@dlq.command("list")
def list_(
    *,
    reason: Reason = None,
    code: Code = None,
    event: Event = None,
    type: Type = None,
    destination: DestinationOpt = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(help="at most this many letters, newest first")] = 100,
    as_json: Json = False,
) -> None:
    """List dead letters, newest first: a table, or JSON lines with --json."""
    from rich.table import Table

    with _context() as ctx:
        where = _filter(
            None,
            reason=reason,
            code=code,
            event=event,
            type=type,
            destination=destination,
            since=since,
            until=until,
            limit=limit,
        )
        letters = list(ctx.store.scan(where))
        if as_json:
            for letter in letters:
                ctx.console.print(_json(letter.to_dict()), markup=False, highlight=False, soft_wrap=True)
            return
        table = Table(title=f"Dead letters (newest first, at most {limit})", title_justify="left")
        for column in ("ID", "Last failure (UTC)", "Destination"):
            table.add_column(column, no_wrap=True)
        table.add_column("Type/Event", overflow="fold")
        table.add_column("Reason", no_wrap=True)
        for column in ("Code", "HTTP", "Attempts"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("Error", overflow="fold")
        for letter in letters:
            what = letter.type + (f": {letter.event}" if letter.event is not None else "")
            code_text, status_text = ("-" if value is None else str(value) for value in (letter.code, letter.status))
            when = _when(letter.last_failure)
            attempts = str(letter.attempts)
            table.add_row(
                letter.id, when, letter.write_key, what, letter.reason, code_text, status_text, attempts, letter.error
            )
        ctx.console.print(table)


@dlq.command()
def show(letter_id: Annotated[str, typer.Argument(help="the letter's id")], *, as_json: Json = False) -> None:
    """Show one letter whole, and what today's transform makes of its message."""
    from worker import dlq as ops
    from worker.destinations import load_destinations
    from worker.errors import ConfigError
    from worker.settings import environment

    with _context() as ctx:
        letter = ctx.store.get(letter_id)
        if letter is None:
            raise _fail(f"no dead letter {letter_id!r}", 1)
        try:
            destinations = load_destinations(ctx.settings.destinations, env=environment())
            today: dict[str, Any] = ops.preview(letter, destinations, time.time())
        except ConfigError as exc:
            today = {"outcome": "unavailable", "reason": str(exc)}
        if as_json:
            ctx.console.print(_json({"letter": letter.to_dict(), "transform": today}), markup=False, soft_wrap=True)
            return
        ctx.console.rule(f"dead letter {letter.id}")
        ctx.console.print_json(_json(letter.to_dict()))
        ctx.console.rule("today's transform")
        ctx.console.print_json(_json(today))


@dlq.command()
def replay(
    ids: Ids = None,
    *,
    all_: All = False,
    rate: Annotated[float, typer.Option(help="messages per second (0: no cap)")] = 100.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be sent; change nothing")] = False,
    reason: Reason = None,
    code: Code = None,
    event: Event = None,
    type: Type = None,
    destination: DestinationOpt = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
) -> None:
    """Put letters back into the delivery queue (re-transformed with today's code and settings when delivered)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from worker import dlq as ops
    from worker.destinations import load_destinations
    from worker.queue import Keys
    from worker.settings import environment

    if not ids and not all_:
        raise _fail("give letter ids, or --all (with filters to narrow it)")
    if rate < 0:
        raise _fail("--rate: must be 0 (no cap) or more")
    with _context() as ctx:
        where = _filter(
            ids,
            reason=reason,
            code=code,
            event=event,
            type=type,
            destination=destination,
            since=since,
            until=until,
            limit=limit,
        )
        destinations = load_destinations(ctx.settings.destinations, env=environment())
        producer = ops.replay_producer(Keys(ctx.settings.redis_prefix), ctx.settings.partitions)
        columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=ctx.errors, transient=dry_run) as bar:
            task = bar.add_task("replay", total=None)
            try:

                def advance(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result = ops.replay(
                    ctx.store, producer, destinations, where, rate=rate, dry_run=dry_run, progress=advance
                )
            except KeyboardInterrupt:
                bar.stop()
                left = ctx.store.count()
                message = f"interrupted; nothing is lost. {left} letters in the store: run the replay again"
                raise _fail(message, 130) from None
        if dry_run:
            for item in result.previews:
                ctx.console.print(_json(item), markup=False, highlight=False, soft_wrap=True)
            would = len(result.previews) - len(result.kept)
            ctx.errors.print(f"dry run: would replay {would} letters", highlight=False)
        else:
            ctx.errors.print(f"replayed {result.replayed} letters into the delivery queue", highlight=False)
        for letter_id, why in result.kept.items():
            ctx.errors.print(f"kept {letter_id}: {why}", highlight=False)


@dlq.command()
def purge(
    ids: Ids = None,
    *,
    all_: All = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    reason: Reason = None,
    code: Code = None,
    event: Event = None,
    type: Type = None,
    destination: DestinationOpt = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
) -> None:
    """Delete letters for good (asks first unless --yes)."""
    from worker import dlq as ops

    if not ids and not all_:
        raise _fail("give letter ids, or --all (with filters to narrow it)")
    with _context() as ctx:
        where = _filter(
            ids,
            reason=reason,
            code=code,
            event=event,
            type=type,
            destination=destination,
            since=since,
            until=until,
            limit=limit,
        )
        count = sum(1 for _ in ctx.store.scan(where))
        if count and not yes and not typer.confirm(f"Delete {count} dead letters for good?", err=True):
            raise _fail("nothing deleted", 1)
        deleted = ops.purge(ctx.store, where)
        ctx.errors.print(f"deleted {deleted} dead letters", highlight=False)


@dlq.command()
def export(
    *,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE, not stdout")] = None,
    reason: Reason = None,
    code: Code = None,
    event: Event = None,
    type: Type = None,
    destination: DestinationOpt = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
) -> None:
    """Write letters as JSON lines (oldest first), to stdout or --output FILE."""
    from worker import dlq as ops

    with _context() as ctx:
        where = _filter(
            None,
            reason=reason,
            code=code,
            event=event,
            type=type,
            destination=destination,
            since=since,
            until=until,
            limit=limit,
        )
        count = 0
        sink = output.open("wb") if output else sys.stdout.buffer
        try:
            for line in ops.export(ctx.store, where):
                sink.write(line)
                count += 1
        finally:
            sink.flush()
            if output:
                sink.close()
        ctx.errors.print(f"exported {count} dead letters" + (f" to {output}" if output else ""), highlight=False)


@dlq.command("import")
def import_(source: Annotated[Path, typer.Argument(help="a JSON lines file from `export` ('-': stdin)")]) -> None:
    """Add letters from a JSON lines file made by `export` (a letter with the same id is replaced)."""
    from worker import dlq as ops

    with _context() as ctx:
        try:
            if str(source) == "-":
                result = ops.import_lines(ctx.store, sys.stdin.buffer)
            else:
                with source.open("rb") as lines:
                    result = ops.import_lines(ctx.store, lines)
        except OSError as exc:
            raise _fail(f"{source}: {exc.strerror or exc}") from None
        ctx.errors.print(f"imported {result.imported} dead letters", highlight=False)
        for error in result.errors:
            ctx.errors.print(f"refused {error}", highlight=False)
        if result.errors:
            raise typer.Exit(1)
