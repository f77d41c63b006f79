"""The relay's state at a glance (``ctrelay status``), read from Redis in one pipelined round trip.

Per partition: stream length, its entries not yet read (the length less the pending ones: the measure of
:class:`worker.store.streams.PartitionBacklog`, right after a Redis restart too) and pending entries
(read, not yet acknowledged), its consumers, whether a drain holds the lease, and the retry schedule
(due now / later). Per CleverTap account: uploads in flight and the adaptive cap. Per destination:
paused after a 401/403, and for how long; the ids (identities, guids) of deleted users it holds
suppressed (``HLEN``: expired ones count until ``ctrelay users delete`` or ``users list`` prunes them).
Dead letters by reason and the age of the oldest. Every key name comes from :class:`worker.core.keys.Keys`;
nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.core.destinations import Destination
from worker.core.keys import Keys
from worker.store.streams import BACKLOG_COMMANDS, group_info, queue_backlog, read_backlog
from worker.store.suppressions import VERSION_FIELD


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    length: int
    lag: int  # entries not yet read: the length less the pending entries (done entries are deleted)
    pending: int
    consumers: int
    draining: bool
    retries_due: int
    retries_later: int

    @property
    def unread(self) -> int:
        return self.lag

    @property
    def backlog(self) -> int:
        """Messages of this partition not yet delivered: its stream plus its retry schedule."""
        return self.length + self.retries_due + self.retries_later


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
    name: str = ""  # how the tables name the destination (its name, not its write key)


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

    @property
    def backlog(self) -> int:
        """Messages not yet delivered (the figure ingest's backlog cap compares)."""
        return sum(p.backlog for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = {
            "lag": self.lag,
            "pending": self.pending,
            "retries": self.retries,
            "backlog": self.backlog,
            "deadletters": sum(self.deadletters.values()),
        }
        return data


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
        queue_backlog(pipe, keys, partition)
        pipe.exists(keys.lease(partition))
        pipe.zcount(keys.retry_due(partition), "-inf", now)
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
        answers = [next(found) for _ in range(BACKLOG_COMMANDS)]
        part, info = read_backlog(answers), group_info(answers[1])
        leased, due = next(found), next(found)
        due_now = due if isinstance(due, int) else 0
        rows.append(
            PartitionStatus(
                partition=partition,
                length=part.length,
                lag=part.unread,
                pending=part.pending,
                consumers=info.consumers,
                draining=leased == 1,
                retries_due=due_now,
                retries_later=max(0, part.scheduled - due_now),
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
        destination_rows.append(
            DestinationStatus(write_key, destination.account_id, paused, suppressed, destination.name)
        )
    counts, oldest = next(found), next(found)
    letters = (
        {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in counts.items()}
        if isinstance(counts, dict)
        else {}
    )
    oldest_age = max(0.0, now - float(oldest[0][1])) if isinstance(oldest, list) and oldest else None
    return Status(now, rows, account_rows, destination_rows, letters, oldest_age)
