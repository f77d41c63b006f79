"""User deletion in the worker: which users are suppressed, and screening a batch's work against them.

A deletion (a ``Delete User`` track, :class:`worker.transform.Delete`; or ``ctrelay users delete`` and the
admin API, :mod:`worker.users`, which queue such a track in the user's partition) is delivered as a
*deletion record* ``{"type": "delete", "identity": [...], "guid": [...]}`` through the same path as
uploads (:mod:`worker.uploads`: CleverTap's delete call, account slots, retries, dead letters).

Suppression, per destination (write key), one Redis hash (:meth:`worker.queue.Keys.suppressed`)::

    i:<identity> | g:<guid>  →  "<until>|<at>|<via>"     (epoch seconds; via: track, cli, admin)

A field is active while ``until`` is in the future (compared with the worker's clock, so expiry needs no
Redis TTL and is testable); expired fields are pruned when a deletion is added or the list is read. Every
change raises the hash's version field ``v`` in the same transaction; a worker keeps a copy of each hash and
re-reads it only when ``v`` moved, so the screen costs one small ``HGET`` per destination and batch (past
:data:`LARGE` ids, a destination is not copied: each batch asks for its own ids with one ``HMGET``).

A deletion suppresses its user when it is accepted: by ingest (a ``Delete User`` track, before its XADD), by
``ctrelay users delete`` or the admin API (in the MULTI that queues it). :meth:`Suppressions.screen` runs on
every batch: each deletion read from the stream suppresses its user again
if the user is not suppressed any more (a replayed letter, an unsuppress before it ran; an active window is
kept), so that the user's other messages of the same batch, before or after it, are dropped too; then
every message with a record whose ``identity`` or ``objectId`` is suppressed is dropped: its stream entry
acknowledged, or its retry item removed, in one MULTI, and counted as
``ctrelay_messages_skipped_total{reason="deleted_user"}``. Deletion records themselves are never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis
import structlog

from worker import metrics
from worker.queue import GROUP, Keys
from worker.retries import RetrySchedule
from worker.suppression import VERSION_FIELD, Suppression, fields_of

if TYPE_CHECKING:
    from redis.client import Pipeline

    from worker.batches import Tally, Work

log = structlog.get_logger("ctrelay.deletion")
SKIP_REASON = "deleted_user"


def is_deletion(work: Work) -> bool:
    """Whether ``work`` is a deletion (its one record is a deletion record)."""
    return bool(work.records) and work.records[0].get("type") == "delete"


_RENEW_LUA = """
local now = tonumber(ARGV[1])
local changed = false
for i = 3, #ARGV do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(string.match(current, '^[^|]+')) <= now then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[2])
    changed = true
  end
end
if changed then redis.call('HINCRBY', KEYS[1], 'v', 1) end
return 1
"""
_UNKNOWN = object()
LARGE = 50_000
"""A destination with more suppressed ids than this is not copied: each batch asks for its own ids (``HMGET``)."""


class Suppressions:
    """The suppressed users of every destination, in Redis; screening keeps a per-process copy of each
    destination's hash, re-read (``HGETALL``) only when its version field has moved."""

    def __init__(self, client: redis.Redis, keys: Keys, window_s: float, clock: Callable[[], float]) -> None:
        self.client = client
        self.keys = keys
        self.window_s = window_s
        self.clock = clock
        self._renew = client.register_script(_RENEW_LUA)
        self._cache: dict[str, tuple[object, dict[str, float]]] = {}
        self.large = LARGE

    def add(
        self, pipe: Pipeline, write_key: str, record: Mapping[str, Any], now: float, via: str, *, renew: bool = False
    ) -> float:
        """Queue (on the caller's MULTI pipeline) the suppression of a deletion record's ids; returns its end.

        A new deletion (ingest, the operator) starts the window anew; with ``renew`` (the worker reading a
        deletion), only ids not suppressed any more are suppressed: an active window is kept as it is. The
        push-token markers of the deleted guids go too: a user who comes back registers their token again."""
        until = now + self.window_s
        fields = fields_of(record)
        for guid in record.get("guid") or ():
            pipe.delete(self.keys.token_sent(write_key, guid))
        if fields:
            key = self.keys.suppressed(write_key)
            value = Suppression("", until, now, via).encode()
            if renew:
                self._renew(keys=[key], args=[now, value, *fields], client=pipe)
            else:
                pipe.hset(key, mapping=dict.fromkeys(fields, value))
                pipe.hincrby(key, VERSION_FIELD, 1)
        return until

    def active(self, write_key: str, now: float) -> list[Suppression]:
        """The destination's active suppressions (expired ones are pruned on the way)."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.suppressed(write_key))  # type: ignore[assignment]
        raw.pop(VERSION_FIELD.encode(), None)
        found = [Suppression.decode(field.decode(), value) for field, value in raw.items()]
        expired = [s.field for s in found if s.until <= now]
        if expired:  # no version change: workers ignore expired entries anyway
            self.client.hdel(self.keys.suppressed(write_key), *expired)
        return sorted((s for s in found if s.until > now), key=lambda s: s.at)

    def lift(self, write_key: str, fields: Iterable[str]) -> int:
        """Lift the suppression of ``fields``; returns how many were suppressed (active or not)."""
        fields = list(fields)
        if not fields:
            return 0
        key = self.keys.suppressed(write_key)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(key, *fields)
            pipe.hincrby(key, VERSION_FIELD, 1)
            removed, _ = pipe.execute()
        return int(removed)

    def view(self, works: list[Work]) -> dict[str, dict[str, float]]:
        """Per write key of ``works``, its suppressed fields → until.

        One round trip (``HGET`` of each version, ``HLEN``); a destination's copy is re-read (``HGETALL``) only
        when its version moved; a destination with more than :attr:`large` ids is asked for the batch's ids."""
        names = list({work.write_key for work in works})
        with self.client.pipeline(transaction=False) as pipe:
            for write_key in names:
                pipe.hget(self.keys.suppressed(write_key), VERSION_FIELD)
                pipe.hlen(self.keys.suppressed(write_key))
            answers: list[Any] = pipe.execute()
        stale: list[str] = []
        large: dict[str, list[str]] = {}
        for index, name in enumerate(names):
            version, size = answers[2 * index], answers[2 * index + 1]
            if size > self.large:
                large[name] = sorted({f for w in works if w.write_key == name for r in w.records for f in fields_of(r)})
            elif self._cached(name) != version:
                stale.append(name)
        found: dict[str, dict[str, float]] = {}
        if stale or large:
            with self.client.pipeline(transaction=False) as pipe:
                for write_key in stale:
                    pipe.hgetall(self.keys.suppressed(write_key))
                for write_key, fields in large.items():
                    pipe.hmget(self.keys.suppressed(write_key), fields)
                replies: list[Any] = pipe.execute()
            for write_key, raw in zip(stale, replies[: len(stale)], strict=True):
                version = raw.pop(VERSION_FIELD.encode(), None)  # the snapshot's own version: consistent with it
                entries = {field.decode(): float(value.partition(b"|")[0]) for field, value in raw.items()}
                self._cache[write_key] = (version, entries)
            for (write_key, fields), values in zip(large.items(), replies[len(stale) :], strict=True):
                found[write_key] = {
                    field: float(value.partition(b"|")[0])
                    for field, value in zip(fields, values, strict=True)
                    if value is not None
                }
        return {name: found[name] if name in large else self._cache[name][1] for name in names}

    def _cached(self, write_key: str) -> object:
        cached = self._cache.get(write_key)
        return _UNKNOWN if cached is None else cached[0]

    def screen(self, partition: int, works: list[Work], tally: Tally) -> list[Work]:
        """Suppress the users of the batch's deletions; drop (acknowledge, unschedule, count) suppressed work."""
        if not works:
            return works
        now = self.clock()
        new: dict[str, set[str]] = {}
        for work in works:
            if work.retry is None and is_deletion(work):  # read from the stream (a retry was seen when first read)
                new.setdefault(work.write_key, set()).update(fields_of(work.records[0]))
        view = self.view(works)
        if not new and not any(view.values()):
            return works
        kept: list[Work] = []
        dropped: list[Work] = []
        for work in works:
            entries, fresh = view[work.write_key], new.get(work.write_key)
            if (entries or fresh) and not is_deletion(work) and _hit(work, entries, fresh, now):
                dropped.append(work)
            else:
                kept.append(work)
        if not new and not dropped:
            return works
        acks = [work.entry_id for work in dropped if work.entry_id is not None]
        with self.client.pipeline(transaction=True) as pipe:
            for work in works:
                if is_deletion(work) and work.retry is None:
                    self.add(pipe, work.write_key, work.records[0], now, _via(work.message), renew=True)
            if acks:
                pipe.xack(self.keys.stream(partition), GROUP, *acks)
                pipe.xdel(self.keys.stream(partition), *acks)
            RetrySchedule(self.client, self.keys, partition).remove(
                pipe, [work.retry.id for work in dropped if work.retry is not None]
            )
            pipe.execute()
        counts: dict[str, int] = {}
        for work in dropped:
            counts[work.write_key] = counts.get(work.write_key, 0) + 1
        for write_key, count in counts.items():
            metrics.messages_skipped.labels(write_key, SKIP_REASON).inc(count)
        tally.skipped += len(dropped)
        log.info("deleted_users_screened", partition=partition, deletions=len(new), dropped=len(dropped))
        return kept


def _hit(work: Work, entries: dict[str, float], fresh: set[str] | None, now: float) -> bool:
    """Whether a record of ``work`` has a suppressed identity or objectId."""
    for record in work.records:
        for name in fields_of(record):
            if fresh is not None and name in fresh:
                return True
            until = entries.get(name)
            if until is not None and until > now:
                return True
    return False


def _via(message: Mapping[str, Any]) -> str:
    """How a deletion came in: ``cli`` / ``admin`` (queued by :mod:`worker.users`), else ``track``."""
    context = message.get("context")
    ctrelay = context.get("ctrelay") if isinstance(context, dict) else None
    via = ctrelay.get("deletion") if isinstance(ctrelay, dict) else None
    return via if isinstance(via, str) and via else "track"
