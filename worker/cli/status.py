"""``ctrelay status``: the tables (or JSON) of :func:`worker.ops.status.read_status`, once or every few seconds."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from worker.core.destinations import Destination
from worker.core.keys import Keys
from worker.ops.status import Status, read_status
from worker.store.connections import Target, close, connect


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


def render(status: Status, *, show_all: bool = False) -> list[Any]:
    """The rich renderables of ``ctrelay status``: a summary line and four tables."""
    from rich.table import Table
    from rich.text import Text

    due = sum(p.retries_due for p in status.partitions)
    letters = sum(status.deadletters.values())
    taken = time.strftime("%H:%M:%S UTC", time.gmtime(status.taken_at))
    summary = Text.assemble(
        ("backlog ", "bold"), str(status.backlog),
        ("  lag ", "bold"), str(status.lag), ("  pending ", "bold"), str(status.pending),
        ("  retry schedule ", "bold"), f"{status.retries} ({due} due)",
        ("  dead letters ", "bold"), (str(letters), "red" if letters else ""), f"   at {taken}",
    )  # fmt: skip
    parts: list[Any] = [summary]

    table = Table(title="Queue by partition", title_justify="left")
    for name in ("partition", "length", "lag", "pending", "consumers", "lease", "retry due", "later"):
        table.add_column(name, justify="center" if name == "lease" else "right")
    shown = 0
    for p in status.partitions:
        busy = p.length or p.lag or p.pending or p.draining or p.retries_due or p.retries_later
        if not (show_all or busy):
            continue
        shown += 1
        table.add_row(
            str(p.partition), str(p.length), str(p.lag), str(p.pending),
            str(p.consumers), "held" if p.draining else "", str(p.retries_due), str(p.retries_later),
        )  # fmt: skip
    idle = len(status.partitions) - shown
    if idle:
        table.caption = f"{idle} idle partition(s) not shown (--all shows every partition)"
    parts.append(table)

    accounts = Table(title="CleverTap accounts", title_justify="left")
    for name in ("account", "uploads in flight", "cap"):
        accounts.add_column(name, justify="left" if name == "account" else "right")
    for a in status.accounts:
        accounts.add_row(a.account_id, str(a.in_flight), f"{a.cap:g}")
    parts.append(accounts)

    destinations = Table(title="Destinations", title_justify="left")
    for name in ("destination", "account", "state", "suppressed ids"):
        destinations.add_column(name, justify="right" if name == "suppressed ids" else "left")
    for d in status.destinations:
        state = (
            Text("ok", "green")
            if d.paused_for_s is None
            else Text(f"paused (401/403), retry in {d.paused_for_s:.0f}s", "red")
        )
        destinations.add_row(d.name or d.account_id, d.account_id, state, str(d.suppressed))
    if any(d.suppressed for d in status.destinations):
        destinations.caption = "suppressed ids: deleted users' identities and guids; details: ctrelay users list"
    parts.append(destinations)

    deadletters = Table(title="Dead letters", title_justify="left", caption="details: ctrelay dlq stats")
    deadletters.add_column("reason")
    deadletters.add_column("letters", justify="right")
    for reason, count in sorted(status.deadletters.items()):
        if count:
            deadletters.add_row(reason, str(count))
    if not letters:
        deadletters.add_row("none", "0")
    if status.oldest_deadletter_age_s is not None:
        deadletters.caption = f"oldest: {_age(status.oldest_deadletter_age_s)} ago; details: ctrelay dlq stats"
    parts.append(deadletters)
    return parts


def status_command(json_output: bool, watch: float, show_all: bool) -> int:
    """``ctrelay status``: print the tables (or JSON) once, or every ``watch`` seconds until Ctrl-C."""
    import orjson
    from rich.console import Console, Group

    from worker.cli.context import fail
    from worker.core.errors import ConfigError
    from worker.core.settings import Settings, load
    from worker.store.streams import check_partitions

    settings = Settings()
    console = Console()
    try:
        destinations: Mapping[str, Destination] = load(settings).destinations
    except ConfigError as exc:  # a bad file is an error here as in every command (not a partial status)
        raise fail(str(exc)) from None
    try:
        client = connect(settings, timeout_s=5, connect_timeout_s=2)  # a cluster client asks a node at once
    except redis.ConnectionError as exc:
        console.print(f"[red]Redis ({Target.of(settings).describe()}) does not answer: {exc}[/]")
        return 1
    keys = Keys(settings.redis_prefix)
    try:
        check_partitions(client, keys, settings.partitions)
        while True:
            status = read_status(client, keys, settings.partitions, destinations, default_cap=settings.concurrency_cap)
            if json_output:
                print(orjson.dumps(status.as_dict()).decode(), flush=True)
            else:
                if watch:
                    console.clear()
                console.print(Group(*render(status, show_all=show_all)))
            if not watch:
                return 0
            time.sleep(watch)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        console.print(f"[red]Redis ({Target.of(settings).describe()}) does not answer: {exc}[/]")
        return 1
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        close(client)
