"""``ctrelay dlq``: the operator's commands on the dead letters. Parsing and printing only; the work is in
:mod:`worker.ops.deadletters`.

``stats``, ``list``, ``replay``, ``purge`` and ``export`` take the filters ``--reason --code --event --type
--destination --since --until --limit`` (times: epoch seconds, ISO 8601, or an age such as ``15m``, ``2h``,
``7d``; they bound the last failure).
Exit status: 0 done, 1 done with refused input (import), 2 bad arguments or settings, 130 interrupted (SIGINT),
143 stopped (SIGTERM).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.context import exit_code_of, fail, group, session
from worker.cli.filters import Filters, filtered

if TYPE_CHECKING:
    from rich.console import Console

    from worker.core.settings import Settings
    from worker.store.deadletters import DeadLetterStore

dlq = group("dlq", "Inspect, replay, purge, export and import dead letters.")

Ids = Annotated[list[str] | None, typer.Argument(help="letter ids", show_default=False)]
All = Annotated[bool, typer.Option("--all", help="every letter matching the filters")]
Json = Annotated[bool, typer.Option("--json", help="JSON (lines) instead of a table")]


@dataclass
class Context:
    settings: Settings
    store: DeadLetterStore
    console: Console
    errors: Console


@contextmanager
def _context() -> Iterator[Context]:
    from rich.console import Console

    from worker.store.deadletters import DeadLetterStore

    with session() as ctx:
        store = DeadLetterStore(ctx.client, ctx.keys, ctx.settings.deadletter_retention)
        store.expire(time.time())  # retention applies before an operator looks, even when no letter came lately
        yield Context(ctx.settings, store, Console(), Console(stderr=True))


def _names(settings: Settings) -> dict[str, str]:
    """Write key -> destination name, for the tables (a bad destinations file is the command's error, exit 2)."""
    from worker.core.settings import load

    destinations = load(settings, require_passcode=False).destinations
    return {key: destination.name for key, destination in destinations.items()}


def _json(data: Any) -> str:
    import orjson

    return orjson.dumps(data).decode()


@dlq.command()
@filtered()
def stats(*, filters: Filters, as_json: Json = False) -> None:
    """Count dead letters by reason, code, event name and destination."""
    from worker.cli.tables import stats_table, when
    from worker.ops import deadletters as ops

    with _context() as ctx:
        where = filters.where()
        result = ops.stats(ctx.store, where)
        if as_json:
            ctx.console.print(_json(result.to_dict()), markup=False, highlight=False, soft_wrap=True)
            return
        ctx.console.print(stats_table(result, _names(ctx.settings)))
        ctx.console.print(f"oldest {when(result.oldest)} UTC, newest {when(result.newest)} UTC", highlight=False)


@dlq.command("list")
@filtered(Annotated[int, typer.Option(help="at most this many letters, newest first")], 100)
def list_(*, filters: Filters, as_json: Json = False) -> None:
    """List dead letters, newest first: a table, or JSON lines with --json."""
    from worker.cli.tables import letters_table

    with _context() as ctx:
        where = filters.where()
        letters = list(ctx.store.scan(where))
        if as_json:
            for letter in letters:
                ctx.console.print(_json(letter.to_dict()), markup=False, highlight=False, soft_wrap=True)
            return
        ctx.console.print(letters_table(letters, filters.limit, _names(ctx.settings)))


@dlq.command()
def show(letter_id: Annotated[str, typer.Argument(help="the letter's id")], *, as_json: Json = False) -> None:
    """Show one letter whole, and what today's transform makes of its message."""
    from worker.core.errors import ConfigError
    from worker.core.settings import load
    from worker.ops import deadletters as ops

    with _context() as ctx:
        letter = ctx.store.get(letter_id)
        if letter is None:
            raise fail(f"no dead letter {letter_id!r}", 1)
        try:
            destinations = load(ctx.settings).destinations
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
@filtered()
def replay(
    ids: Ids = None,
    *,
    all_: All = False,
    rate: Annotated[float, typer.Option(help="messages per second (0: no cap)")] = 100.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would be sent; change nothing")] = False,
    filters: Filters,
) -> None:
    """Put letters back into the delivery queue (re-transformed with today's code and settings when delivered)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from worker.core.keys import Keys
    from worker.core.settings import load
    from worker.ops import deadletters as ops

    if not ids and not all_:
        raise fail("give letter ids, or --all (with filters to narrow it)")
    if rate < 0:
        raise fail("--rate: must be 0 (no cap) or more")
    with _context() as ctx:
        where = filters.where(ids)
        destinations = load(ctx.settings).destinations
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
            except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (worker.cli.context.handle_interrupts)
                bar.stop()
                left = ctx.store.count()
                message = f"interrupted; nothing is lost. {left} letters in the store: run the replay again"
                raise fail(message, exit_code_of(interrupt)) from None
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
@filtered()
def purge(
    ids: Ids = None,
    *,
    all_: All = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    filters: Filters,
) -> None:
    """Delete letters for good (asks first unless --yes)."""
    from worker.ops import deadletters as ops

    if not ids and not all_:
        raise fail("give letter ids, or --all (with filters to narrow it)")
    with _context() as ctx:
        where = filters.where(ids)
        count = sum(1 for _ in ctx.store.scan(where))
        if count and not yes and not typer.confirm(f"Delete {count} dead letters for good?", err=True):
            raise fail("nothing deleted", 1)
        deleted = ops.purge(ctx.store, where)
        ctx.errors.print(f"deleted {deleted} dead letters", highlight=False)


@dlq.command()
@filtered()
def export(
    *,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE, not stdout")] = None,
    filters: Filters,
) -> None:
    """Write letters as JSON lines (oldest first), to stdout or --output FILE."""
    from worker.ops import deadletters as ops

    with _context() as ctx:
        where = filters.where()
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
    from worker.ops import deadletters as ops

    with _context() as ctx:
        try:
            if str(source) == "-":
                result = ops.import_lines(ctx.store, sys.stdin.buffer)
            else:
                with source.open("rb") as lines:
                    result = ops.import_lines(ctx.store, lines)
        except OSError as exc:
            raise fail(f"{source}: {exc.strerror or exc}") from None
        ctx.errors.print(f"imported {result.imported} dead letters", highlight=False)
        for error in result.errors:
            ctx.errors.print(f"refused {error}", highlight=False)
        if result.errors:
            raise typer.Exit(1)
