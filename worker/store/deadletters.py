"""The dead-letter store: messages that will not be delivered, kept for operators to inspect and replay.

A letter (:class:`worker.store.letters.Letter`)
keeps the raw message as accepted, its destination (write key), the reason, CleverTap's per-record
code and error text, the last HTTP status, the attempt count and the first and last failure times.
Its id is deterministic per (write key, messageId), so a message dead-lettered twice is one
letter (the second write replaces the first).

Layout (key names in :class:`worker.core.keys.Keys`; one hash tag, ``{dlq}``)::

    {dlq}:letters   hash   id → letter JSON
    {dlq}:times     zset   id scored by last_failure   (time ranges, newest-first listing, retention)
    {dlq}:reasons   hash   id → reason                 (keeps the counts right on replace and remove)
    {dlq}:counts    hash   reason → count              (the ctrelay_deadletters{reason} gauge, O(1))

The four keys change together, inside Lua scripts, so they never disagree. :meth:`DeadLetterStore.add`
and :meth:`DeadLetterStore.remove` only *queue* commands on the caller's pipeline: the worker writes a letter
and XACKs its stream entry in one MULTI (on a cluster, in that order: :mod:`worker.store.ordered`).
:meth:`DeadLetterStore.requeue` (replay) removes letters and XADDs their messages back in one atomic script
(on a cluster, ordered writes: see there). Retention is lazy (each ``add`` drops up
to 100 letters older than the retention) and periodic (:meth:`DeadLetterStore.expire`, for the scheduler).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import redis
from redis.client import Pipeline

from worker.core.keys import FIELD_MESSAGE, FIELD_WRITE_KEY, Keys
from worker.store.connections import is_cluster
from worker.store.letters import REASONS, Filter, Letter
from worker.store.producer import Entry
from worker.store.scripts import on_pipeline

DEFAULT_RETENTION_S = 14 * 86_400
LAZY_EXPIRE_LIMIT = 100
_SCAN_BATCH = 1000

# KEYS: letters, times, reasons, counts.
_DROP = """
local function drop(id)
  local reason = redis.call('HGET', KEYS[3], id)
  if reason then
    if redis.call('HINCRBY', KEYS[4], reason, -1) <= 0 then redis.call('HDEL', KEYS[4], reason) end
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  return redis.call('HDEL', KEYS[1], id)
end
local function expire(cutoff, limit)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do drop(id) end
  return #ids
end
"""
# ARGV: id, letter JSON, last_failure, reason, expiry cutoff, expiry limit.
_ADD = (
    _DROP
    + """
drop(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
return expire(ARGV[5], ARGV[6])
"""
)
# ARGV: ids. Returns how many existed.
_REMOVE = (
    _DROP
    + """
local removed = 0
for _, id in ipairs(ARGV) do removed = removed + drop(id) end
return removed
"""
)
# ARGV: cutoff, limit. Returns how many were removed.
_EXPIRE = _DROP + "\nreturn expire(ARGV[1], ARGV[2])\n"
# KEYS[5..]: one stream per letter. ARGV: the two envelope field names, then per letter: id, write key, message.
# A letter still in the store is removed and its entry XADDed, atomically; one already gone is skipped.
_REQUEUE = (
    _DROP
    + """
local moved = {}
for i = 1, #KEYS - 4 do
  local id = ARGV[3 * i]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    drop(id)
    redis.call('XADD', KEYS[4 + i], '*', ARGV[1], ARGV[3 * i + 1], ARGV[2], ARGV[3 * i + 2])
    moved[#moved + 1] = id
  end
end
return moved
"""
)
# Cluster mode (the streams have other tags than the letters): after the XADDs, ARGV: per letter: id, the letter JSON
# read before its replay. Drops each letter still equal to what was read (one
# written again since, by a worker that failed its replayed message already, is kept). Returns the ids dropped.
_REMOVE_SAME = (
    _DROP
    + """
local removed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    drop(ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
"""
)


class DeadLetterStore:
    """The dead letters of one relay (one key prefix) in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self._keys = keys.deadletter_keys()
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._expire = client.register_script(_EXPIRE)
        self._requeue = client.register_script(_REQUEUE)
        self._remove_same = client.register_script(_REMOVE_SAME)

    # -- writes that join the caller's transaction ---------------------------------------------------------

    def add(self, pipe: Pipeline, letter: Letter) -> None:
        """Queue the write of ``letter`` (replacing one with the same id) on ``pipe``, a MULTI pipeline.

        Also drops up to 100 letters older than the retention (counted from ``letter.last_failure``).
        """
        if letter.reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {letter.reason!r} (expected one of {', '.join(REASONS)})")
        cutoff = letter.last_failure - self.retention_s
        args: list[str | bytes | int] = [
            letter.id,
            letter.encode(),
            repr(letter.last_failure),
            letter.reason,
            repr(cutoff),
            LAZY_EXPIRE_LIMIT,
        ]
        on_pipeline(self._add, pipe, self._keys, args)

    def remove(self, pipe: Pipeline, ids: Iterable[str]) -> None:
        """Queue the removal of the letters ``ids`` on ``pipe`` (its result: how many existed)."""
        ids = list(ids)
        if ids:
            on_pipeline(self._remove, pipe, self._keys, ids)

    def requeue(self, moves: Sequence[tuple[str, Entry]]) -> list[str]:
        """Put letters back into the queue: for each (letter id, producer entry), remove the letter if it is still
        here and XADD the entry to its stream. Returns the ids moved (a letter already gone, replayed or purged by
        someone else, is not sent again).

        On a single Redis one script, so a letter leaves the store only together with its XADD, without WATCH:
        workers writing letters at the same time cannot starve it. On a Redis Cluster (the streams and the letters
        have different hash tags) ordered writes: the letters are read, their entries XADDed, and only then each
        letter removed, and only if it is still the one read (a worker that already failed the replayed message
        again has written a newer letter, which stays). A crash between the XADDs and the removal leaves the letters
        in the store with their messages queued: a second replay sends them again (a repeat, never a loss); so may
        two operators replaying the same letters at the same moment.
        """
        if not moves:
            return []
        if is_cluster(self.client):
            return self._requeue_in_order(moves)
        keys = self._keys + [entry.stream for _, entry in moves]
        args: list[str | bytes] = [FIELD_WRITE_KEY, FIELD_MESSAGE]
        for moved_id, entry in moves:
            args += (moved_id, entry.write_key, entry.message)
        moved: list[bytes] = self._requeue(keys=keys, args=args)
        return [item.decode() for item in moved]

    def _requeue_in_order(self, moves: Sequence[tuple[str, Entry]]) -> list[str]:
        raws: list[bytes | None] = self.client.hmget(self.keys.deadletters(), [moved for moved, _ in moves])  # type: ignore[assignment]
        present = [(moved, entry, raw) for (moved, entry), raw in zip(moves, raws, strict=True) if raw is not None]
        if not present:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for _, entry, _ in present:
                pipe.xadd(entry.stream, {FIELD_WRITE_KEY: entry.write_key, FIELD_MESSAGE: entry.message})
            pipe.execute()
        args: list[str | bytes] = []
        for moved, _, raw in present:
            args += (moved, raw)
        self._remove_same(keys=self._keys, args=args)
        return [moved for moved, _, _ in present]

    # -- standalone operations -----------------------------------------------------------------------------

    def put(self, letters: Iterable[Letter]) -> int:
        """Write letters in transactions of up to 1000 (import, tests). Returns how many were written."""
        written = 0
        batch: list[Letter] = []
        for letter in letters:
            batch.append(letter)
            if len(batch) >= _SCAN_BATCH:
                written += self._put(batch)
                batch = []
        return written + (self._put(batch) if batch else 0)

    def _put(self, letters: list[Letter]) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            for letter in letters:
                self.add(pipe, letter)
            pipe.execute()
        return len(letters)

    def delete(self, ids: Iterable[str]) -> int:
        """Remove letters now; returns how many existed."""
        ids = list(ids)
        return int(self._remove(keys=self._keys, args=ids)) if ids else 0

    def expire(self, now: float, batch: int = 1000) -> int:
        """Remove every letter whose last failure is older than the retention; returns how many. For the scheduler."""
        cutoff = now - self.retention_s
        removed = 0
        while True:
            count = int(self._expire(keys=self._keys, args=[repr(cutoff), batch]))
            removed += count
            if count < batch:
                return removed

    def get(self, letter_id: str) -> Letter | None:
        raw = self.client.hget(self.keys.deadletters(), letter_id)
        return None if raw is None else Letter.decode(raw)

    def get_many(self, ids: list[str]) -> list[Letter]:
        """The letters that exist among ``ids``, in that order."""
        if not ids:
            return []
        raws = self.client.hmget(self.keys.deadletters(), ids)
        return [Letter.decode(raw) for raw in raws if raw is not None]

    def count(self) -> int:
        return int(self.client.zcard(self.keys.deadletter_times()))

    def counts(self) -> dict[str, int]:
        """Letters per reason (O(reasons))."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.deadletter_counts())  # type: ignore[assignment]
        return {key.decode(): int(value) for key, value in raw.items() if int(value) > 0}

    def oldest(self) -> float | None:
        """The last-failure time of the oldest letter, or None when the store is empty."""
        first = self.client.zrange(self.keys.deadletter_times(), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def scan(self, where: Filter | None = None, *, newest_first: bool = True) -> Iterator[Letter]:
        """The letters matching ``where``, newest (or oldest) first, read 1000 at a time.

        The time range is answered by the sorted set; the other filters by decoding each letter in the range.
        """
        where = where or Filter()
        if where.ids:
            letters: Iterable[Letter] = self.get_many(list(dict.fromkeys(where.ids)))
            yield from _limited((letter for letter in letters if where.matches(letter)), where.limit)
            return
        yield from _limited(
            (letter for letter in self._range(where, newest_first) if where.matches(letter)), where.limit
        )

    def _range(self, where: Filter, newest_first: bool) -> Iterator[Letter]:
        """Walk the time index by score (not by offset), so that concurrent adds and removals skip nothing."""
        low = -float("inf") if where.since is None else where.since
        high = float("inf") if where.until is None else where.until
        times = self.keys.deadletter_times()
        bound: float | None = None  # the score the previous page ended at
        seen: set[bytes] = set()  # members at that score already read
        while low <= high:
            page: list[tuple[bytes, float]]
            num = _SCAN_BATCH + len(seen)
            if newest_first:
                page = self.client.zrevrangebyscore(times, high, low, start=0, num=num, withscores=True)  # type: ignore[assignment]
            else:
                page = self.client.zrangebyscore(times, low, high, start=0, num=num, withscores=True)  # type: ignore[assignment]
            page = [(member, score) for member, score in page if member not in seen]
            if not page:
                return
            yield from self.get_many([member.decode() for member, _ in page])
            edge = float(page[-1][1])
            at_edge = {member for member, score in page if score == edge}
            seen = at_edge | seen if edge == bound else at_edge
            bound = edge
            if newest_first:
                high = edge
            else:
                low = edge


def _limited(letters: Iterable[Letter], limit: int | None) -> Iterator[Letter]:
    for index, letter in enumerate(letters):
        if limit is not None and index >= limit:
            return
        yield letter
