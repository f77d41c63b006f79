"""The producer: how accepted messages are written into their partition streams (ingest; dead-letter replay).

Each message is its own stream entry (the envelope of :mod:`worker.core.keys`). Ingest's write is a Lua script
that checks and sets each message's compact dedup marker (:mod:`worker.store.dedup`) and XADDs it only when the
marker was new: one call per request on one Redis, one per partition the request touches on a cluster.
Ingest's backlog figure is read here too, with the one measure of :mod:`worker.store.streams`.

Every key a script touches carries the partition's hash tag (:mod:`worker.core.keys`), so a Redis Cluster runs it on
one node; a deleted user's suppression fields (their hash has its own tag) are written after the stream write, as
ordered steps (:meth:`Producer._suppress`). On a cluster, redis-py's asyncio client failing a command on a connection
it reset itself is read as a ConnectionError (ingest answers 503, the client retries).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError, ResponseError

from worker.core.keys import FIELD_MESSAGE, FIELD_WRITE_KEY, Keys, partition_of
from worker.store.connections import is_cluster, reset_is_connection_error
from worker.store.dedup import SPLIT, Markers, digest, keyed
from worker.store.evalsha import run_scripts
from worker.store.streams import measure_backlog, queue_backlog, read_backlogs

# The write of one or more partitions (a cluster: one, whose keys share its tag; one Redis: all of a request's).
# KEYS per partition: its sizes hash, its stream, per entry its marker set of the current bucket and, only when the
# previous bucket has sets (its S is not 0), of the previous one, then a pending key per deletion. ARGV: the bucket,
# the previous one, the TTL of a new set, the write key, the pending keys' TTL, then per partition: the S of both
# buckets as the writer computed the sets with (the call is refused before it writes anything when one is stale),
# the number of entries and of deletions, per entry its member and message, per deletion its entry's number. A
# message is added when its member is new in both sets; a failed XADD (a key of the wrong type) removes the member
# again and fails the script, so that the client's retry is not taken for a duplicate. A deletion that is added
# sets its pending key. The answer, per partition: a stream id (or false: a duplicate) per entry, then a flag per
# deletion: write its suppression (added now, or a duplicate whose pending key is still there: an earlier attempt
# did not finish). Redis's CPU goes to the calls (SADD, SISMEMBER, XADD: each call and each argument costs), so
# the loop is index arithmetic over KEYS and ARGV, with no table or string made per message, and what it uses of
# Lua's globals (redis.call, KEYS, ARGV) is held in locals: a global's lookup per use was ~5 % of Redis's
# instructions per message (callgrind). The calls stay per message (SADD, SISMEMBER, XADD), not per marker set:
# a bucket is sized for ~128 members a set, so under load (many messages a window) a call's messages of one
# partition almost never share a set, and a set's SMISMEMBER and SADD would be two calls where one SADD was.
_ENQUEUE_LUA = """
local call, pcall, KEYS, ARGV, tonumber = redis.call, redis.pcall, KEYS, ARGV, tonumber
local bucket, before, ttl, w, hold = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local last = #ARGV
local a, k = 6, 1
while a <= last do
  local sizes = call('HMGET', KEYS[k], bucket, before)
  if (sizes[1] or '0') ~= ARGV[a] or (sizes[2] or '0') ~= ARGV[a + 1] then
    return redis.error_reply('STALE dedup sizes')
  end
  local n, d = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  k = k + 2 + (ARGV[a + 1] ~= '0' and 2 or 1) * n + d
  a = a + 4 + 2 * n + d
end
local out = {}
local at = 0
a, k = 6, 1
while a <= last do
  local n, d = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local stream, check = KEYS[k + 1], ARGV[a + 1] ~= '0'
  local step = check and 2 or 1
  local dels, held = a + 4 + 2 * n, k + 2 + step * n
  local pending = false
  if d > 0 then
    pending = {}
    for j = 0, d - 1 do pending[tonumber(ARGV[dels + j])] = KEYS[held + j] end
  end
  local s = k + 2
  for m = a + 4, dels - 1, 2 do
    local set, member = KEYS[s], ARGV[m]
    local added = call('SADD', set, '0', member)
    at = at + 1
    if added == 0 or (check and call('SISMEMBER', KEYS[s + 1], member) == 1) then
      out[at] = false
    else
      if added == 2 then call('EXPIRE', set, ttl) end
      local id = pcall('XADD', stream, '*', 'w', w, 'm', ARGV[m + 1])
      if id.err then  -- (an id, a string, has no err: strings index the string library)
        call('SREM', set, member)
        return id
      end
      out[at] = id
      if pending then
        local key = pending[(m - a - 2) / 2]  -- (the entry's number in its partition)
        if key then call('SET', key, '1', 'EX', hold) end
      end
    end
    s = s + step
  end
  for j = 0, d - 1 do
    out[at + j + 1] = (out[at - n + tonumber(ARGV[dels + j])] or call('EXISTS', KEYS[held + j]) == 1) and 1 or 0
  end
  at = at + d
  a, k = dels + d, held + d
end
return out
"""

# The suppressions of a request's deletions, after their stream writes (the hash has a tag of its own). KEYS: the
# hash. ARGV: the version field, then field/value pairs; the version is raised once.
_SUPPRESS_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""


_ATTEMPTS = 4
"""Script calls per partition and request at most: a stale size (a bucket that started) is reloaded and retried."""


_MAKERS = 256
"""Write keys whose :meth:`Producer.maker` is kept (ingest asks only for its destinations')."""


_NAMED_SHARDS = 4096
"""Buckets of up to this many sets have their sets' names made once (a bigger one's are made per entry)."""


class Entry(NamedTuple):
    """One envelope ready to write: its stream and partition, its dedup marker, and the encoded fields.

    A NamedTuple: immutable, and ~3x cheaper to make than a frozen dataclass (ingest makes one per message).
    """

    stream: str
    partition: int
    member: bytes
    """The marker's member and shard hash (:func:`worker.store.dedup.digest`)."""
    shard: int
    write_key: bytes
    message: bytes


class Producer:
    """Writes envelopes into their partition streams, each message its own entry.

    :meth:`enqueue` is ingest's path: a script (``EVALSHA``) that, per message and atomically, checks and sets
    its compact dedup marker (:mod:`worker.store.dedup`) and ``XADD``\\s the entry only when the marker was new:
    on one Redis one call per request, on a cluster one per partition the request touches (its keys share the
    partition's hash tag), pipelined (one round trip per node). A conditional XADD needs the script: a plain
    pipeline cannot skip the XADD of a duplicate. :meth:`add` queues plain XADDs (no dedup) on the caller's
    pipeline, so that dead-letter replay can re-add a letter and delete it in one MULTI.
    """

    def __init__(
        self, keys: Keys, partitions: int, dedup_window: int, *, replicas: int = 0, replicas_timeout_s: float = 1.0
    ) -> None:
        self.keys = keys
        self.partitions = partitions
        self.dedup_window = dedup_window
        self.markers = Markers(keys, dedup_window)
        self.clock = time.time
        """The time the dedup buckets are taken from (tests replace it)."""
        self.per_partition: bool | None = None
        """A script call per partition (True), per request (False), or as the client says (None: a cluster's)."""
        self.replicas = replicas
        self.replicas_timeout_ms = max(1, int(replicas_timeout_s * 1000))
        self._streams = self.streams()
        self._sizes = [keys.seen_sizes(p) for p in range(partitions)]
        self._makers: dict[str, Callable[[str, str, bytes], Entry]] = {}
        """:meth:`maker`'s, by write key (a relay's destinations: few)."""
        self._shard_names: dict[tuple[int, int, int], list[str]] = {}
        """The marker sets' names of a partition's bucket of S sets, by (partition, bucket, S), made once."""

    def entry(self, write_key: str, message: dict[str, Any], encoded: bytes | None = None) -> Entry:
        """Prepare one envelope; ``message`` must carry ``messageId``. ``encoded`` saves a second dumps."""
        user = str(message.get("userId") or message.get("anonymousId") or "")
        partition = partition_of(user, self.partitions)
        key = write_key.encode("utf-8")
        member, shard = digest(key, str(message["messageId"]))
        return Entry(
            self._streams[partition],
            partition,
            member,
            shard,
            key,
            encoded if encoded is not None else orjson.dumps(message),
        )

    def maker(self, write_key: str) -> Callable[[str, str, bytes], Entry]:
        """:meth:`entry` for the messages of one write key (a request's), as ``make(user, message_id, encoded)``:
        ``user`` is the message's ``userId or anonymousId`` and ``message_id`` its ``messageId``, both as strings.

        The same :class:`Entry` as :meth:`entry` (tested side by side), with what every message of the write key
        shares looked up once: :func:`~worker.core.keys.partition_of` and :func:`~worker.store.dedup.digest` are
        inlined (ingest makes one per message). Made once per write key."""
        made = self._makers.get(write_key)
        if made is not None:
            return made
        if len(self._makers) >= _MAKERS:
            self._makers.clear()
        key = write_key.encode("utf-8")
        start = keyed(key)
        streams, partitions, crc32, split, new = self._streams, self.partitions, zlib.crc32, SPLIT, tuple.__new__

        def make(user: str, message_id: str, encoded: bytes) -> Entry:
            partition = crc32(user.encode("utf-8")) % partitions
            hashed = start.copy()
            hashed.update(message_id.encode("utf-8"))
            member, shard = split(hashed.digest())
            # (tuple.__new__: the Entry a NamedTuple's own __new__, a Python function, would make)
            return new(Entry, (streams[partition], partition, b"%d" % (member or 1), shard, key, encoded))

        self._makers[write_key] = make
        return make

    async def enqueue(
        self,
        client: AsyncRedis,
        entries: Sequence[Entry],
        suppress: tuple[str, str, Mapping[int, Mapping[str, str]]] | None = None,
    ) -> list[bytes | None]:
        """Write ``entries``; per entry its stream id, or None for a duplicate (the same write key and messageId
        within the dedup window, in the same partition).

        On one Redis, one script call per write key (a request has one) for all its partitions: atomic, so that
        a full Redis refuses a request as a whole. On a cluster, one per partition, all in one pipeline (a
        partition's keys share its hash tag: each script runs on one node; a request refused midway, 503, may
        have queued some partitions' entries, which its retry finds duplicates).

        ``suppress`` (hash key, version field, {entry index: fields}): a deleted user's suppression fields, written
        in ordered steps after the stream writes (the hash has its own tag), before this returns. A new deletion
        sets a *pending* key of its partition in its script; its fields are written (the version raised once), then
        the pending key is deleted. A duplicate deletion (a client's retry) writes its fields only while its pending
        key is there, i.e. when an earlier attempt failed before finishing (503): the retry completes it; a retry
        of a request that had succeeded suppresses nobody again (after ``ctrelay users unsuppress`` too).

        With ``replicas`` (N > 0), each write ends with ``WAIT N`` on its connection, and
        :class:`~worker.core.errors.NotReplicated` is raised when fewer than N replicas confirmed the write in
        time (the entries are written on the primary: the client's retry is deduplicated).

        Raises ``redis.RedisError`` (or ``OSError``) when Redis does not answer: then the caller
        must not report success; a retry is safe, as each entry is written with its marker.
        """
        if not entries:
            return []
        deletions = set(suppress[2]) if suppress is not None else set()
        written, pending = await self._enqueue(client, entries, deletions)
        if suppress is not None:
            await self._suppress(client, entries, pending, suppress)
        return written

    async def _enqueue(
        self, client: AsyncRedis, entries: Sequence[Entry], deletions: set[int]
    ) -> tuple[list[bytes | None], set[int]]:
        """The stream ids (None: a duplicate), and the deletions whose suppression is to be written."""
        groups: dict[tuple[int, bytes], list[int]] = {}  # a request's entries share one write key
        for index, entry in enumerate(entries):
            group = (entry.partition, entry.write_key)
            found = groups.get(group)
            if found is None:
                groups[group] = [index]
            else:
                found.append(index)
        written: list[bytes | None] = [None] * len(entries)
        pending: set[int] = set()
        markers = self.markers
        alone = is_cluster(client) if self.per_partition is None else self.per_partition
        todo = list(groups)
        for _ in range(_ATTEMPTS):
            now = self.clock()
            bucket = markers.bucket(now)
            await markers.load(client, {partition for partition, _ in todo}, bucket)
            calls: dict[Any, list[tuple[int, bytes]]] = {}
            for group in todo:
                calls.setdefault(group if alone else group[1], []).append(group)
            scripts = [self._call(entries, groups, deletions, m, bucket=bucket, now=now) for m in calls.values()]
            answers = await self._execute(client, scripts)
            stale: list[tuple[int, bytes]] = []
            failure: BaseException | None = None
            for members, answer in zip(calls.values(), answers, strict=True):
                if isinstance(answer, NoScriptError):  # a restarted Redis: loaded again by _execute
                    stale += members
                elif isinstance(answer, ResponseError) and str(answer).startswith("STALE"):
                    for partition, _ in members:
                        markers.forget(partition)
                    stale += members
                elif isinstance(answer, BaseException):
                    failure = failure or answer
                else:
                    at = 0
                    for group in members:
                        indexes = groups[group]
                        for index, stream_id in zip(indexes, answer[at : at + len(indexes)], strict=True):
                            written[index] = stream_id
                        at += len(indexes)
                        if not deletions:
                            continue
                        asks = [index for index in indexes if index in deletions]
                        flags = answer[at : at + len(asks)]
                        pending.update(index for index, flag in zip(asks, flags, strict=True) if flag)
                        at += len(asks)
            if failure is not None:
                raise failure
            if not stale:
                return written, pending
            todo = stale
        raise ResponseError("dedup sizes kept changing: retry")

    def _call(
        self,
        entries: Sequence[Entry],
        groups: Mapping[tuple[int, bytes], list[int]],
        deletions: set[int],
        members: list[tuple[int, bytes]],
        *,
        bucket: int,
        now: float,
    ) -> tuple[str, list[str], list[Any]]:
        """The script, KEYS and ARGV of one call, for the partitions ``members`` (of one write key)."""
        keys: list[str] = []
        args: list[Any] = [bucket, bucket - 1, self.markers.ttl(bucket, now), members[0][1], self.dedup_window]
        cached, set_keys = self.markers.cached, self._set_keys
        for group in members:
            partition = group[0]
            indexes = groups[group]
            sizes = cached(partition, bucket)
            assert sizes is not None  # loaded by the caller
            shards, previous = sizes
            asks = [index for index in indexes if index in deletions] if deletions else []
            chosen = [entries[index] for index in indexes]
            keys += (self._sizes[partition], self._streams[partition])
            args += (shards, previous, len(chosen), len(asks))
            # (the pairs interleaved by slice assignment and a plain loop: no tuple per entry nor a comprehension's
            # frame: 5-29 % fewer of this function's instructions than a comprehension of pairs, 1 to 800 messages)
            if previous:  # the previous bucket's set only when that bucket has sets
                pairs: list[Any] = [None] * (2 * len(chosen))
                pairs[::2] = set_keys(partition, bucket, shards, chosen)
                pairs[1::2] = set_keys(partition, bucket - 1, previous, chosen)
                keys += pairs
            else:
                keys += set_keys(partition, bucket, shards, chosen)
            for entry in chosen:
                args += (entry.member, entry.message)
            if asks:
                keys += [self.keys.seen_pending(partition, entries[index].member.decode("ascii")) for index in asks]
                args += [indexes.index(index) + 1 for index in asks]
        return _ENQUEUE_LUA, keys, args

    def _set_keys(self, partition: int, bucket: int, shards: int, chosen: list[Entry]) -> list[str]:
        """The marker set of each entry in ``bucket`` of ``partition`` (split in ``shards`` sets): its shard's."""
        names = self._shard_names.get((partition, bucket, shards))
        if names is None:
            stem = self.keys.seen_stem(partition, bucket)
            if shards > _NAMED_SHARDS:
                return [f"{stem}{entry.shard % shards}" for entry in chosen]
            if len(self._shard_names) >= 4 * self.partitions:  # (older buckets' names)
                self._shard_names.clear()
            names = self._shard_names[(partition, bucket, shards)] = [f"{stem}{shard}" for shard in range(shards)]
        return [names[entry.shard % shards] for entry in chosen]

    async def _execute(self, client: AsyncRedis, scripts: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        return await run_scripts(client, scripts, self.replicas, self.replicas_timeout_ms)

    async def _suppress(
        self,
        client: AsyncRedis,
        entries: Sequence[Entry],
        pending: set[int],
        suppress: tuple[str, str, Mapping[int, Mapping[str, str]]],
    ) -> None:
        """The ordered steps after the stream writes: the suppression fields of ``pending`` deletions, then their
        pending keys deleted (a failure in between: the client's retry writes the fields again)."""
        hash_key, version, fields = suppress
        args: list[str] = [version]
        for index in sorted(pending):
            for name, value in fields[index].items():
                args += (name, value)
        if len(args) == 1:
            return
        for _ in range(2):
            (answer,) = await self._execute(client, [(_SUPPRESS_LUA, [hash_key], args)])
            if not isinstance(answer, NoScriptError):
                break
        if isinstance(answer, BaseException):
            raise answer
        pending_keys = [self.keys.seen_pending(entries[i].partition, entries[i].member.decode()) for i in pending]
        async with client.pipeline(transaction=False) as pipe:
            for key in pending_keys:
                pipe.delete(key)
            await reset_is_connection_error(pipe.execute())

    def add(self, pipe: Any, entries: Sequence[Entry]) -> None:
        """Queue one XADD per entry on the caller's (sync or async) pipeline; no dedup marker is checked."""
        for entry in entries:
            pipe.xadd(entry.stream, {FIELD_WRITE_KEY: entry.write_key, FIELD_MESSAGE: entry.message})

    def streams(self) -> list[str]:
        return [self.keys.stream(p) for p in range(self.partitions)]

    async def backlog(self, client: AsyncRedis) -> int:
        """Messages not yet delivered, over every partition, in one round trip: the streams' lengths plus the retry
        schedules' sizes (:class:`~worker.store.streams.PartitionBacklog`; right after a Redis restart too)."""
        pipe = client.pipeline(transaction=False)
        for partition in range(self.partitions):
            queue_backlog(pipe, self.keys, partition)
        executed = pipe.execute(raise_on_error=False)
        answers = await (reset_is_connection_error(executed) if is_cluster(client) else executed)
        return sum(part.total for part in read_backlogs(answers, self.partitions))

    def backlog_sync(self, client: Redis) -> int:
        """:meth:`backlog` for a synchronous client (the operator CLI)."""
        return sum(part.total for part in measure_backlog(client, self.keys, self.partitions))
