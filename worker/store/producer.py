"""The producer: how accepted messages are written into their partition streams (ingest; dead-letter replay).

Each message is its own stream entry (the envelope of :mod:`worker.core.keys`). Ingest's write is one Lua
script per request that sets each message's dedup marker and XADDs it only when the marker was new. Ingest's
backlog figure is read here too, with the one measure of :mod:`worker.store.streams`.

On a Redis Cluster a script may touch one slot only: the dedup marker of a message carries its partition's hash tag
(beside its stream), and the request's entries are written by one script call per partition, sent concurrently
(one round trip per node). A deleted user's suppression fields (their hash has its own tag) are written after the
XADD of their entry, by a script of their own: a crash between the two answers the client an error, and the
worker suppresses the user anyway when it reads the deletion (:mod:`worker.delivery.screen`), so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import redis
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.core.errors import NotReplicated
from worker.core.keys import FIELD_MESSAGE, FIELD_WRITE_KEY, Keys, partition_of
from worker.store.connections import is_cluster
from worker.store.streams import measure_backlog, queue_backlog, read_backlogs

# KEYS: (dedup marker, stream) per entry; ARGV: window, then w and m per entry. A message whose marker is new is
# added; a failed XADD (a key of the wrong type) removes its marker again and fails the script, so that the
# client's retry is not taken for a duplicate (entries added before it are, rightly).
_ENQUEUE_LUA = """
local window = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  if redis.call('SET', KEYS[2 * i - 1], '1', 'NX', 'EX', window) then
    local id = redis.pcall('XADD', KEYS[2 * i], '*', 'w', ARGV[2 * i], 'm', ARGV[2 * i + 1])
    if type(id) == 'table' and id.err then
      redis.call('DEL', KEYS[2 * i - 1])
      return id
    end
    out[i] = id
  else
    out[i] = false
  end
end
return out
"""

# As _ENQUEUE_LUA, and a message that is new (not a duplicate) may carry suppression fields, written (HSET, with
# the version raised once) in the same script, after its XADD (a failed XADD suppresses nobody; no worker reads
# between the two). KEYS: (dedup, stream) per entry, then the hash.
# ARGV: window, then per entry: w, m, the number of field/value pairs, the pairs.
_ENQUEUE_SUPPRESSING_LUA = """
local window = ARGV[1]
local hash = KEYS[#KEYS]
local out = {}
local at = 2
local changed = false
for i = 1, (#KEYS - 1) / 2 do
  local pairs_count = tonumber(ARGV[at + 2])
  if redis.call('SET', KEYS[2 * i - 1], '1', 'NX', 'EX', window) then
    local id = redis.pcall('XADD', KEYS[2 * i], '*', 'w', ARGV[at], 'm', ARGV[at + 1])
    if type(id) == 'table' and id.err then
      redis.call('DEL', KEYS[2 * i - 1])
      return id
    end
    out[i] = id
    if pairs_count > 0 then
      redis.call('HSET', hash, unpack(ARGV, at + 3, at + 2 + 2 * pairs_count))
      changed = true
    end
  else
    out[i] = false
  end
  at = at + 3 + 2 * pairs_count
end
if changed then redis.call('HINCRBY', hash, ARGV[at], 1) end
return out
"""


# KEYS: the suppressions' hash. ARGV: the version field, then field/value pairs. (Cluster mode, after the XADDs.)
_SUPPRESS_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""


async def _reset_is_connection_error(call: Awaitable[Any]) -> Any:
    """``await call``; an AttributeError or RuntimeError raised by redis-py's asyncio cluster client is a
    ConnectionError: when a node fails, that client closes the node's connections under the feet of commands in
    flight on them ("'NoneType' object has no attribute 'writelines'", "the handler is closed")."""
    try:
        return await call
    except (AttributeError, RuntimeError) as exc:
        raise redis.ConnectionError(f"Redis Cluster connection reset: {exc}") from exc


class Entry(NamedTuple):
    """One envelope ready to write: its stream, its dedup marker, and the encoded fields.

    A NamedTuple: immutable, and ~3x cheaper to make than a frozen dataclass (ingest makes one per message).
    """

    stream: str
    dedup: str
    write_key: bytes
    message: bytes


class Producer:
    """Writes envelopes into their partition streams, each message its own entry.

    :meth:`enqueue` is ingest's path: one round trip per request (one ``EVALSHA``) that, per
    message and atomically, sets the dedup marker ``SET NX EX`` and ``XADD``\\s the entry only when
    the marker was new. A conditional XADD needs the script: a plain pipeline cannot skip the
    XADD of a duplicate. :meth:`add` queues plain XADDs (no dedup) on the caller's pipeline, so that
    dead-letter replay can re-add a letter and delete it in one MULTI.
    """

    def __init__(
        self, keys: Keys, partitions: int, dedup_window: int, *, replicas: int = 0, replicas_timeout_s: float = 1.0
    ) -> None:
        self.keys = keys
        self.partitions = partitions
        self.dedup_window = dedup_window
        self.replicas = replicas
        self.replicas_timeout_ms = max(1, int(replicas_timeout_s * 1000))
        self._scripts: dict[tuple[bool, str], Any] = {}
        self._streams = self.streams()

    def entry(self, write_key: str, message: dict[str, Any], encoded: bytes | None = None) -> Entry:
        """Prepare one envelope; ``message`` must carry ``messageId``. ``encoded`` saves a second dumps."""
        user = str(message.get("userId") or message.get("anonymousId") or "")
        partition = partition_of(user, self.partitions)
        return Entry(
            self._streams[partition],
            self.keys.dedup(write_key, str(message["messageId"]), partition),
            write_key.encode("utf-8"),
            encoded if encoded is not None else orjson.dumps(message),
        )

    def _script(self, client: Any, source: str) -> Any:
        """The registered script for ``source`` (one per client kind; called with ``client=``)."""
        kind = (type(client).__module__.startswith("redis.asyncio"), source)
        script = self._scripts.get(kind)
        if script is None:
            script = self._scripts[kind] = client.register_script(source)
        return script

    async def enqueue(
        self,
        client: AsyncRedis,
        entries: Sequence[Entry],
        suppress: tuple[str, str, Mapping[int, Mapping[str, str]]] | None = None,
    ) -> list[bytes | None]:
        """Write ``entries`` in one round trip; per entry its stream id, or None for a duplicate.

        ``suppress`` (hash key, version field, {entry index: fields}): a deleted user's suppression fields,
        written in the same script as the XADD of their entry (atomic: no reader sees one without the other),
        and only when that entry is new (a duplicate re-suppresses nobody); the hash's version field is
        raised once when any was written.

        With ``replicas`` (N > 0), the script and a ``WAIT N`` go in one pipeline on one connection, and
        :class:`~worker.core.errors.NotReplicated` is raised when fewer than N replicas confirmed the write in
        time (the entries are written on the primary: the client's retry is deduplicated).

        Raises ``redis.RedisError`` (or ``OSError``) when Redis does not answer: then the caller
        must not report success; a retry is safe, as markers, suppressions and entries are written together.
        """
        if not entries:
            return []
        if is_cluster(client):
            return await self._enqueue_by_partition(client, entries, suppress)
        if suppress is not None:
            return await self._enqueue_suppressing(client, entries, *suppress)
        keys: list[str] = []
        args: list[bytes | int] = [self.dedup_window]
        for entry in entries:
            keys += (entry.dedup, entry.stream)
            args += (entry.write_key, entry.message)
        return await self._run(client, _ENQUEUE_LUA, keys, args)

    async def _run(self, client: AsyncRedis, source: str, keys: list[str], args: Sequence[Any]) -> list[bytes | None]:
        """Run one enqueue script; with ``replicas``, followed by ``WAIT`` on the same connection."""
        script = self._script(client, source)
        if not self.replicas:
            result: list[bytes | None] = await script(keys=keys, args=args, client=client)
            return result
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)  # queued: a pipeline answers at execute()
            pipe.wait(self.replicas, self.replicas_timeout_ms)
            written, acked = await pipe.execute()
        if int(acked) < self.replicas:
            raise NotReplicated(int(acked), self.replicas)
        return list(written)

    async def _enqueue_suppressing(
        self,
        client: AsyncRedis,
        entries: Sequence[Entry],
        hash_key: str,
        version: str,
        fields: Mapping[int, Mapping[str, str]],
    ) -> list[bytes | None]:
        keys: list[str] = []
        args: list[bytes | int | str] = [self.dedup_window]
        for index, entry in enumerate(entries):
            keys += (entry.dedup, entry.stream)
            pairs = fields.get(index, {})
            args += (entry.write_key, entry.message, len(pairs))
            for name, value in pairs.items():
                args += (name, value)
        keys.append(hash_key)
        args.append(version)
        return await self._run(client, _ENQUEUE_SUPPRESSING_LUA, keys, args)

    async def _enqueue_by_partition(
        self,
        client: AsyncRedis,
        entries: Sequence[Entry],
        suppress: tuple[str, str, Mapping[int, Mapping[str, str]]] | None,
    ) -> list[bytes | None]:
        """:meth:`enqueue` on a Redis Cluster: one script call per partition (concurrent), then the suppressions of
        the new entries (see the module docstring)."""
        groups: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            groups.setdefault(entry.stream, []).append(index)
        calls = []
        for indexes in groups.values():
            keys: list[str] = []
            args: list[bytes | int] = [self.dedup_window]
            for index in indexes:
                keys += (entries[index].dedup, entries[index].stream)
                args += (entries[index].write_key, entries[index].message)
            calls.append(self._run(client, _ENQUEUE_LUA, keys, args))
        answers = await _reset_is_connection_error(asyncio.gather(*calls))
        found: list[bytes | None] = [None] * len(entries)
        for indexes, written in zip(groups.values(), answers, strict=True):
            for index, entry_id in zip(indexes, written, strict=True):
                found[index] = entry_id
        if suppress is not None:
            hash_key, version, fields = suppress
            pairs: list[str] = []
            for index, named in fields.items():
                if found[index] is not None:  # a duplicate re-suppresses nobody
                    for name, value in named.items():
                        pairs += (name, value)
            if pairs:
                await self._script(client, _SUPPRESS_LUA)(keys=[hash_key], args=[version, *pairs], client=client)
        return found

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
        answers = await (_reset_is_connection_error(executed) if is_cluster(client) else executed)
        return sum(part.total for part in read_backlogs(answers, self.partitions))

    def backlog_sync(self, client: Redis) -> int:
        """:meth:`backlog` for a synchronous client (the operator CLI)."""
        return sum(part.total for part in measure_backlog(client, self.keys, self.partitions))
