"""The tables ``ctrelay dlq`` prints (stats and list): rich tables built from values, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from rich.table import Table

from worker.ops.deadletters import Stats
from worker.store.letters import Letter


def when(epoch: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def stats_table(result: Stats, names: Mapping[str, str]) -> Table:
    """Counts by (reason, code, event, destination), biggest first, then the totals per reason; destinations by
    their names (``names``: write key -> name; a write key no longer configured is shown as it is)."""
    table = Table(title=f"Dead letters: {result.total}", title_justify="left")
    for column in ("Reason", "Code", "Event", "Destination"):
        table.add_column(column)
    table.add_column("Count", justify="right")
    for (r, c, e, d), n in result.groups.most_common():
        table.add_row(r, "-" if c is None else str(c), e, names.get(d, d), str(n))
    if len(result.by_reason) > 1:
        table.add_section()
        for r, n in result.by_reason.most_common():
            table.add_row(f"{r} (all)", "", "", "", str(n))
    return table


def letters_table(letters: Iterable[Letter], limit: int | None, names: Mapping[str, str]) -> Table:
    """One row per letter, in the order given; destinations by their names, as in :func:`stats_table`."""
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
        when_text = when(letter.last_failure)
        attempts = str(letter.attempts)
        table.add_row(
            letter.id,
            when_text,
            names.get(letter.write_key, letter.write_key),
            what,
            letter.reason,
            code_text,
            status_text,
            attempts,
            letter.error,
        )
    return table
