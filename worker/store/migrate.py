"""The upgrade of a relay's data from the layout before hash tags to today's (``ctrelay migrate``).

Run with ingest and every worker stopped, on the Redis the old release used (standalone or Sentinel; the old
layout never ran on a cluster). It refuses while a drain holds a partition lease, in either layout. Per kind:

- **streams**: renamed (``RENAME`` keeps the consumer group and its pending entries, so what a stopped worker had
  read is reclaimed as before). A new-layout stream that already holds entries (ingest started before the
  migration) gets the old entries appended, a chunk at a time (XADD to the new stream, then XDEL from the old: a
  crash between repeats that chunk once, never loses it); their per-user order behind the newer entries is then
  not kept, which the output says. An empty new-layout stream (a worker started first) is replaced by the old one.
- **retry schedules**: renamed, or merged into an existing new one (an item already there is kept), then removed.
- **dead letters**: the four keys renamed, or (new letters already written) each old letter not in the new store
  added to it, then the old keys removed.
- **suppressions**: each write key's hash renamed, or merged (fields already there are kept; version raised).
- **account caps** renamed; upload slots and dispatch markers (they expire within seconds) removed.
- **dedup markers**: the old layout's (a key per message) converted into compact ones by
  :func:`worker.store.dedup.migrate`, keeping their remaining window (so that a client's retry of a message
  accepted just before the upgrade is still answered as a duplicate).

Every step checks before it writes, so running it again after a crash or on migrated data moves what is left
(nothing, the second time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.core.errors import ConfigError
from worker.core.keys import FIELD_MESSAGE, FIELD_WRITE_KEY, Keys, LegacyKeys
from worker.store import dedup
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter
from worker.store.suppressions import VERSION_FIELD

_CHUNK = 1000


@dataclass
class Migration:
    """What :func:`migrate` moved, per kind, and what it wants the operator to know."""

    streams: int = 0
    entries: int = 0
    pending: int = 0
    appended: int = 0
    retry_items: int = 0
    letters: int = 0
    suppressions: int = 0
    caps: int = 0
    removed: int = 0
    dedup: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def moved_anything(self) -> bool:
        moved = (self.streams, self.retry_items, self.letters, self.suppressions, self.caps, self.removed, self.dedup)
        return any(moved)

    def lines(self) -> list[str]:
        """The report, one line per kind."""
        return [
            f"streams: {self.streams} moved ({self.entries} entries, {self.pending} of them pending; "
            f"{self.appended} appended to a stream already in use)",
            f"retry schedules: {self.retry_items} items moved",
            f"dead letters: {self.letters} moved",
            f"suppressions: {self.suppressions} destinations moved",
            f"account caps: {self.caps} moved; {self.removed} expiring keys (slots, dispatch markers) removed",
            f"dedup markers: {self.dedup} converted",
            *self.notes,
        ]


def _scan(client: redis.Redis, pattern: str) -> Iterator[str]:
    for key in client.scan_iter(match=pattern, count=_CHUNK):
        yield key.decode() if isinstance(key, bytes) else str(key)


def _held_leases(client: redis.Redis, keys: Keys, legacy: LegacyKeys, partitions: int) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.exists(legacy.lease(partition), keys.lease(partition))
    return [partition for partition, held in enumerate(pipe.execute()) if held]


def migrate(
    client: redis.Redis, keys: Keys, partitions: int, dedup_window: int, write_keys: Sequence[str] = ()
) -> Migration:
    """Move the data of the layout before hash tags into today's (see the module docstring); ConfigError while a
    drain holds a lease. ``write_keys``: the destinations' (to read an old marker whose write key holds a ``:``)."""
    legacy = LegacyKeys(keys.prefix)
    held = _held_leases(client, keys, legacy, partitions)
    if held:
        raise ConfigError(
            f"workers hold the leases of partitions {', '.join(map(str, held))}: stop every worker (and ingest) "
            "first; a dead worker's lease expires within CTRELAY_LEASE_TTL_S"
        )
    done = Migration()
    for partition in range(partitions):
        _stream(client, legacy.stream(partition), keys.stream(partition), done)
        _schedule(client, legacy, keys, partition, done)
    _deadletters(client, legacy, keys, done)
    _suppressions(client, legacy, keys, done)
    _accounts(client, legacy, keys, partitions, done)
    done.dedup = dedup.migrate(client, keys, partitions, dedup_window, write_keys)
    return done


def _stream(client: redis.Redis, old: str, new: str, done: Migration) -> None:
    if not client.exists(old):
        return
    length = int(client.xlen(old))
    if client.exists(new) and int(client.xlen(new)) == 0:
        client.delete(new)  # a worker of the new release made it (and its group) empty: the old one takes its place
    if not client.exists(new):
        groups: Any = client.xinfo_groups(old)
        done.pending += sum(int(group.get("pending") or 0) for group in groups)
        client.rename(old, new)
        done.streams += 1
        done.entries += length
        return
    done.notes.append(
        f"note: {new} already held entries: {length} older entries were appended after them (per-user order "
        "between the two is not kept; start ingest only after `ctrelay migrate` to avoid this)"
    )
    while True:
        chunk: Any = client.xrange(old, count=_CHUNK)
        if not chunk:
            break
        with client.pipeline(transaction=False) as pipe:
            for _, fields in chunk:
                pipe.xadd(new, {FIELD_WRITE_KEY: fields[FIELD_WRITE_KEY], FIELD_MESSAGE: fields[FIELD_MESSAGE]})
            pipe.execute()
        client.xdel(old, *[entry_id for entry_id, _ in chunk])  # after the XADDs: a crash repeats, never loses
        done.appended += len(chunk)
        done.entries += len(chunk)
    client.delete(old)
    done.streams += 1


def _schedule(client: redis.Redis, legacy: LegacyKeys, keys: Keys, partition: int, done: Migration) -> None:
    old_items, new_items = legacy.retry_items(partition), keys.retry_items(partition)
    old_due, new_due = legacy.retry_due(partition), keys.retry_due(partition)
    if not client.exists(old_items, old_due):
        return
    done.retry_items += int(client.hlen(old_items))
    if not client.exists(new_items, new_due):
        for old, new in ((old_items, new_items), (old_due, new_due)):
            if client.exists(old):
                client.rename(old, new)
        return
    items: Any = client.hgetall(old_items)
    scores: Any = client.zrange(old_due, 0, -1, withscores=True)
    with client.pipeline(transaction=False) as pipe:
        for item, raw in items.items():
            pipe.hsetnx(new_items, item, raw)
        if scores:
            pipe.zadd(new_due, dict(scores), nx=True)
        pipe.execute()
    client.delete(old_items, old_due)


def _deadletters(client: redis.Redis, legacy: LegacyKeys, keys: Keys, done: Migration) -> None:
    olds, news = legacy.deadletter_keys(), keys.deadletter_keys()
    if not client.exists(*olds):
        return
    if not client.exists(*news):
        done.letters += int(client.hlen(olds[0]))
        for old, new in zip(olds, news, strict=True):
            if client.exists(old):
                client.rename(old, new)
        return
    store = DeadLetterStore(client, keys)
    cursor = 0
    while True:
        answer: Any = client.hscan(olds[0], cursor, count=_CHUNK)
        cursor, page = answer
        with client.pipeline(transaction=False) as pipe:
            for key in page:
                pipe.hexists(news[0], key)
            there: list[Any] = pipe.execute()
        letters = [Letter.decode(page[key]) for key, exists in zip(page, there, strict=True) if not exists]
        done.letters += store.put(letters)
        if cursor == 0:
            break
    client.delete(*olds)


def _suppressions(client: redis.Redis, legacy: LegacyKeys, keys: Keys, done: Migration) -> None:
    for old in list(_scan(client, legacy.suppressed_pattern())):
        new = keys.suppressed(legacy.name_in(old, "suppressed"))
        done.suppressions += 1
        if not client.exists(new):
            client.rename(old, new)
            continue
        raw: Any = client.hgetall(old)
        raw.pop(VERSION_FIELD.encode(), None)
        with client.pipeline(transaction=False) as pipe:
            for name, value in raw.items():
                pipe.hsetnx(new, name, value)
            pipe.hincrby(new, VERSION_FIELD, 1)  # the workers' copies are read again
            pipe.execute()
        client.delete(old)


def _accounts(client: redis.Redis, legacy: LegacyKeys, keys: Keys, partitions: int, done: Migration) -> None:
    for old in list(_scan(client, legacy.cap_pattern())):
        new = keys.cap(legacy.name_in(old, "cap"))
        if client.exists(new):
            client.delete(old)
        else:
            client.rename(old, new)
            done.caps += 1
    expiring = list(_scan(client, legacy.slots_pattern()))
    expiring += [legacy.dispatched(p) for p in range(partitions) if client.exists(legacy.dispatched(p))]
    if expiring:
        done.removed += int(client.delete(*expiring))
