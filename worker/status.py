"""``ctrelay status``: the relay's state at a glance, read from Redis in one pipelined round trip.

Per partition: stream length, the consumer group's lag (entries not yet read) and pending entries
(read, not yet acknowledged), its consumers, whether a drain holds the lease, and the retry schedule
(due now / later). Per CleverTap account: uploads in flight and the adaptive cap. Per destination:
paused after a 401/403, and for how long; the ids (identities, guids) of deleted users it holds
suppressed (``HLEN``: expired ones count until ``ctrelay users delete`` or ``users list`` prunes them).
Dead letters by reason and the age of the oldest. Every key name comes from :class:`worker.queue.Keys`;
nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.destinations import Destination
from worker.queue import GROUP, Keys
from worker.suppression import VERSION_FIELD


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    length: int
    lag: int | None  # None: Redis cannot tell (entries deleted out of order); no group yet: the stream length
    pending: int
    consumers: int
    draining: bool
    retries_due: int
    retries_later: int

    @property
    def unread(self) -> int:
        """The lag, or when Redis cannot tell, the entries neither acknowledged nor pending (workers delete
        what they acknowledge, so the stream holds only unread and pending entries)."""
        return self.lag if self.lag is not None else max(0, self.length - self.pending)


@dataclass(frozen=True)
class AccountStatus:
    account_id: str
    in_flight: int
    cap: float


@dataclass(frozen=True)
class DestinationStatus:
    write_key: str
    account_id: str
    paused_for_s: float | None  # seconds left of a 401/403 pause; None when not paused
    suppressed: int = 0  # ids of deleted users held in the destination's suppression hash


@dataclass(frozen=True)
class Status:
    """One consistent-enough look at the relay (one round trip; values may move while it is shown)."""

    taken_at: float
    partitions: list[PartitionStatus]
    accounts: list[AccountStatus]
    destinations: list[DestinationStatus]
    deadletters: dict[str, int] = field(default_factory=dict)
    oldest_deadletter_age_s: float | None = None

    @property
    def lag(self) -> int:
        return sum(p.unread for p in self.partitions)

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self.partitions)

    @property
    def retries(self) -> int:
        return sum(p.retries_due + p.retries_later for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = {
            "lag": self.lag,
            "pending": self.pending,
            "retries": self.retries,
            "deadletters": sum(self.deadletters.values()),
        }
        return data


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _group_info(groups: Any) -> tuple[int | None, int, int]:
    """(lag, pending, consumers) of the relay's group in an XINFO GROUPS answer; no group: (None, 0, 0)."""
    if not isinstance(groups, list):
        return None, 0, 0
    for group in groups:
        info = {_text(k): v for k, v in group.items()}
        if _text(info.get("name")) == GROUP:
            lag = info.get("lag")
            return (
                (int(lag) if lag is not None else None),
                int(info.get("pending") or 0),
                int(info.get("consumers") or 0),
            )
    return None, 0, 0


def _has_group(groups: Any) -> bool:
    return isinstance(groups, list) and any(
        _text({_text(k): v for k, v in g.items()}.get("name")) == GROUP for g in groups
    )


def read_status(
    client: redis.Redis,
    keys: Keys,
    partitions: int,
    destinations: Mapping[str, Destination],
    *,
    default_cap: float,
    now: float | None = None,
) -> Status:
    """Read everything ``ctrelay status`` shows, in one pipelined round trip."""
    now = time.time() if now is None else now
    accounts = list(dict.fromkeys(d.account_id for d in destinations.values()))
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.xlen(keys.stream(partition))
        pipe.xinfo_groups(keys.stream(partition))
        pipe.exists(keys.lease(partition))
        pipe.zcount(keys.retry_due(partition), "-inf", now)
        pipe.zcard(keys.retry_due(partition))
    for account in accounts:
        pipe.zcount(keys.slots(account), int(now * 1000), "+inf")
        pipe.hget(keys.cap(account), "cap")
    for write_key in destinations:
        pipe.pttl(keys.paused(write_key))
        pipe.hlen(keys.suppressed(write_key))
        pipe.hexists(keys.suppressed(write_key), VERSION_FIELD)
    pipe.hgetall(keys.deadletter_counts())
    pipe.zrange(keys.deadletter_times(), 0, 0, withscores=True)
    results: list[Any] = pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, redis.ConnectionError | redis.TimeoutError):
            raise result

    found = iter(results)
    rows = []
    for partition in range(partitions):
        length, groups, leased, due, scheduled = (next(found) for _ in range(5))
        lag, pending, consumers = _group_info(groups)
        if not _has_group(groups):  # no worker has read this stream yet: every entry waits
            lag = length if isinstance(length, int) else 0
        due_now = due if isinstance(due, int) else 0
        rows.append(
            PartitionStatus(
                partition=partition,
                length=length if isinstance(length, int) else 0,
                lag=lag,
                pending=pending,
                consumers=consumers,
                draining=leased == 1,
                retries_due=due_now,
                retries_later=max(0, (scheduled if isinstance(scheduled, int) else 0) - due_now),
            )
        )
    account_rows = []
    for account in accounts:
        held, cap = next(found), next(found)
        account_rows.append(
            AccountStatus(
                account_id=account,
                in_flight=held if isinstance(held, int) else 0,
                cap=float(cap) if isinstance(cap, bytes | str) else float(default_cap),
            )
        )
    destination_rows = []
    for write_key, destination in destinations.items():
        ttl_ms, held, versioned = next(found), next(found), next(found)
        paused = ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None
        suppressed = max(0, held - int(versioned is True)) if isinstance(held, int) else 0
        destination_rows.append(DestinationStatus(write_key, destination.account_id, paused, suppressed))
    counts, oldest = next(found), next(found)
    letters = {_text(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}
    oldest_age = max(0.0, now - float(oldest[0][1])) if isinstance(oldest, list) and oldest else None
    return Status(now, rows, account_rows, destination_rows, letters, oldest_age)


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
        ("lag ", "bold"), str(status.lag), ("  pending ", "bold"), str(status.pending),
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
            str(p.partition), str(p.length), f"~{p.unread}" if p.lag is None else str(p.lag), str(p.pending),
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
    for name in ("write key", "account", "state", "suppressed ids"):
        destinations.add_column(name, justify="right" if name == "suppressed ids" else "left")
    for d in status.destinations:
        state = (
            Text("ok", "green")
            if d.paused_for_s is None
            else Text(f"paused (401/403), retry in {d.paused_for_s:.0f}s", "red")
        )
        destinations.add_row(d.write_key, d.account_id, state, str(d.suppressed))
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

    from worker.destinations import Destinations
    from worker.errors import ConfigError
    from worker.settings import Settings, load

    settings = Settings()
    console = Console()
    try:
        destinations: Mapping[str, Destination] = load(settings).destinations
    except ConfigError as exc:
        console.print(f"[yellow]destinations not loaded ({exc}); accounts and destinations are not shown[/]")
        destinations = Destinations([])
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    keys = Keys(settings.redis_prefix)
    try:
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
        console.print(f"[red]Redis at {settings.redis_url.split('@')[-1]} does not answer: {exc}[/]")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
