"""User deletion in the worker: which users are suppressed, and screening a batch's work against them.

A deletion (a ``Delete User`` track, :class:`worker.transform.Delete`; or ``ctrelay users delete`` and the
admin API, :mod:`worker.users`, which queue such a track in the user's partition) is delivered as a
*deletion record* ``{"type": "delete", "identity": [...], "guid": [...]}`` through the same path as
uploads (:mod:`worker.uploads`: CleverTap's delete call, account slots, retries, dead letters).

Suppression, per destination (write key), one Redis hash (:meth:`worker.queue.Keys.suppressed`)::

    i:<identity> | g:<guid>  →  "<until>|<at>|<via>"     (epoch seconds; via: track, cli, admin)

A field is active while ``until`` is in the future (compared with the worker's clock, so expiry needs no
Redis TTL and is testable); expired fields are pruned when a deletion is added or the list is read.

A deletion suppresses its user when it is accepted: by ingest (a ``Delete User`` track, before its XADD), by
``ctrelay users delete`` or the admin API (in the MULTI that queues it). :meth:`Suppressions.screen` runs on
every batch (one ``HMGET`` per destination): each deletion read from the stream suppresses its user again
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
from worker.suppression import Suppression, fields_of

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
for i = 3, #ARGV do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(string.match(current, '^[^|]+')) <= now then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[2])
  end
end
return 1
"""


class Suppressions:
    """The suppressed users of every destination, in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, window_s: float, clock: Callable[[], float]) -> None:
        self.client = client
        self.keys = keys
        self.window_s = window_s
        self.clock = clock
        self._renew = client.register_script(_RENEW_LUA)

    def add(
        self, pipe: Pipeline, write_key: str, record: Mapping[str, Any], now: float, via: str, *, renew: bool = False
    ) -> float:
        """Queue (on the caller's pipeline) the suppression of a deletion record's ids; returns its end.

        A new deletion (ingest, the operator) starts the window anew; with ``renew`` (the worker reading a
        deletion), only ids not suppressed any more are suppressed: an active window is kept as it is."""
        until = now + self.window_s
        fields = fields_of(record)
        if fields:
            value = Suppression("", until, now, via).encode()
            if renew:
                self._renew(keys=[self.keys.suppressed(write_key)], args=[now, value, *fields], client=pipe)
            else:
                pipe.hset(self.keys.suppressed(write_key), mapping=dict.fromkeys(fields, value))
        return until

    def active(self, write_key: str, now: float) -> list[Suppression]:
        """The destination's active suppressions (expired ones are pruned on the way)."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.suppressed(write_key))  # type: ignore[assignment]
        found = [Suppression.decode(field.decode(), value) for field, value in raw.items()]
        expired = [s.field for s in found if s.until <= now]
        if expired:
            self.client.hdel(self.keys.suppressed(write_key), *expired)
        return sorted((s for s in found if s.until > now), key=lambda s: s.at)

    def lift(self, write_key: str, fields: Iterable[str]) -> int:
        """Lift the suppression of ``fields``; returns how many were suppressed (active or not)."""
        fields = list(fields)
        return int(self.client.hdel(self.keys.suppressed(write_key), *fields)) if fields else 0

    def screen(self, partition: int, works: list[Work], tally: Tally) -> list[Work]:
        """Suppress the users of the batch's deletions; drop (acknowledge, unschedule, count) suppressed work."""
        if not works:
            return works
        now = self.clock()
        new: dict[str, set[str]] = {}
        wanted: dict[str, set[str]] = {}
        for work in works:
            if is_deletion(work):
                if work.retry is None:  # read from the stream (a retry was seen when first read)
                    new.setdefault(work.write_key, set()).update(fields_of(work.records[0]))
            else:
                names = wanted.setdefault(work.write_key, set())
                for record in work.records:
                    names.update(fields_of(record))
        asked = [(write_key, sorted(names)) for write_key, names in wanted.items() if names]
        active = {write_key: set(names) for write_key, names in new.items()}
        if asked:
            with self.client.pipeline(transaction=False) as pipe:
                for write_key, fields in asked:
                    pipe.hmget(self.keys.suppressed(write_key), fields)
                answers: list[list[bytes | None]] = pipe.execute()
            for (write_key, fields), values in zip(asked, answers, strict=True):
                for name, value in zip(fields, values, strict=True):
                    if value is not None and Suppression.decode(name, value).until > now:
                        active.setdefault(write_key, set()).add(name)
        if not active:
            return works
        kept: list[Work] = []
        dropped: list[Work] = []
        for work in works:
            suppressed = active.get(work.write_key)
            hit = suppressed and not is_deletion(work) and any(suppressed & set(fields_of(r)) for r in work.records)
            if hit:
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
        if new or dropped:
            log.info("deleted_users_screened", partition=partition, deletions=len(new), dropped=len(dropped))
        return kept


def _via(message: Mapping[str, Any]) -> str:
    """How a deletion came in: ``cli`` / ``admin`` (queued by :mod:`worker.users`), else ``track``."""
    context = message.get("context")
    ctrelay = context.get("ctrelay") if isinstance(context, dict) else None
    via = ctrelay.get("deletion") if isinstance(ctrelay, dict) else None
    return via if isinstance(via, str) and via else "track"
