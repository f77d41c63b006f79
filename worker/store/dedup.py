"""Dedup markers, compact: a 64-bit digest per accepted message in time-bucketed sets of its partition.

A message is a duplicate when its write key and ``messageId`` were accepted within the dedup window (setting
``CTRELAY_DEDUP_WINDOW``, W seconds) for the same partition (the partition of its user: a retry carries the same
user, so it lands there). Layout, all under the partition's hash tag (:mod:`worker.core.keys`):

- **digest**: BLAKE2b of ``<write key>\\n<messageId>`` (computed by ingest): 8 bytes are the *member* (a signed
  64-bit integer, never 0), 4 more pick the *shard*. Two messages collide only when both agree: at most ~1,000
  members share the two sets a message is checked against, so the odds that a new message is taken for a
  duplicate are below 1,000 / 2^64 ≈ 5·10^-17: at 10,000 msg/s, one expected false drop in ~60,000 years.
- **buckets** of W seconds (``floor(now / W)``): a message is checked against its shard of the current and of the
  previous bucket and added to the current one; a bucket's sets expire as a whole at the end of the next bucket,
  so a marker is remembered for at least W and at most 2 W (on average 1.5 W of messages are held).
- **shards**: each bucket of a partition is split into S sets, S chosen when the bucket starts (first write) from
  the previous bucket's fill so that a set holds ~``TARGET_FILL`` members (sampled with SCARD): Redis keeps a set
  of up to 512 integers (``set-max-intset-entries``) as an intset, 8 B per member, where a hashtable set costs
  ~60 B per member and a key ~100-160 B. The sizes live in the hash ``seen_sizes(partition)`` (bucket → S); a
  writer passes the S it used and the script refuses a stale one (``STALE``: the writer reloads and retries), so
  that every writer looks where the others wrote. The first bucket of a partition gets ``INITIAL_SHARDS``; a
  rate that grows more than ~4x from one bucket to the next turns its sets into hashtables (correct, dearer).
- **new sets** are told by a sentinel member ``0``: the script adds ``0`` with each member, and ``SADD`` answering
  2 means the set is new and gets its expiry (one EXPIRE per set, not per message).

The check and the XADD are one script (worker/store/producer.py: a request's on one Redis, a partition's on a
cluster). Markers of the old layout (a key per message, ``Keys.dedup``) are not consulted (that would cost an
EXISTS per message and, on a cluster, a key of another slot): :func:`migrate` converts them (``ctrelay migrate``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError

from worker.core.keys import Keys
from worker.store.evalsha import run_scripts

TARGET_FILL = 128
"""Members per marker set a bucket is sized for: a fourth of the intset limit, so that a rate that grows up to ~4x
from one bucket to the next still fits."""
INITIAL_SHARDS = 64
"""Sets per bucket of a partition with no previous bucket to size from."""
MAX_SHARDS = 1 << 22
SAMPLES = 8
"""Sets of the previous bucket whose sizes are read to size a new bucket (shards 0..7)."""
SENTINEL = b"0"
SPLIT = struct.Struct("<qI").unpack
"""A digest's 12 bytes: the member (signed 64-bit) and the shard hash (unsigned 32-bit), little-endian."""

# KEYS: the sizes hash, then shards 0..SAMPLES-1 of the previous bucket. ARGV: bucket, previous bucket, the one
# before (forgotten), initial, target, max, the hash's TTL, the least S. Answers {S of bucket, S of previous or 0}.
_SIZE_LUA = """
local sizes = KEYS[1]
local cur = redis.call('HGET', sizes, ARGV[1])
local prev = tonumber(redis.call('HGET', sizes, ARGV[2]) or '0')
if not cur then
  local shards = tonumber(ARGV[4])
  if prev > 0 then
    local n = math.min(prev, #KEYS - 1)
    local total = 0
    for i = 1, n do
      local count = redis.call('SCARD', KEYS[i + 1])
      if count > 0 then total = total + count - 1 end
    end
    local members = prev * total / n
    shards = math.max(1, math.min(tonumber(ARGV[6]), math.ceil(members / tonumber(ARGV[5]))))
  end
  shards = math.max(shards, tonumber(ARGV[8]))
  cur = tostring(shards)
  redis.call('HSET', sizes, ARGV[1], cur)
  redis.call('HDEL', sizes, ARGV[3])
  redis.call('EXPIRE', sizes, ARGV[7])
end
return {tonumber(cur), prev}
"""


def digest(write_key: bytes, message_id: str) -> tuple[bytes, int]:
    """The marker of a message: its member (a 64-bit integer, as Redis reads it: decimal, never 0) and the hash
    that picks its shard."""
    hashed = keyed(write_key).copy()  # (a copy of the hash fed ``<write key>\n``: half the cost of a new one)
    hashed.update(message_id.encode("utf-8"))
    member, shard = SPLIT(hashed.digest())
    return str(member or 1).encode("ascii"), shard


@functools.lru_cache(maxsize=64)
def keyed(write_key: bytes) -> Any:
    """BLAKE2b (12 bytes) fed ``<write key>\n``: every message of a destination starts so (:func:`digest` goes on
    from a copy of it; so does :meth:`worker.store.producer.Producer.maker`, which inlines :func:`digest`)."""
    return hashlib.blake2b(write_key + b"\n", digest_size=12)


class Markers:
    """The marker sets of one relay: which bucket is current, how each partition's buckets are split (cached per
    process; the sizes hash in Redis is authoritative), and the expiry of new sets."""

    def __init__(self, keys: Keys, window: int) -> None:
        self.keys = keys
        self.window = max(1, int(window))
        self._sizes: dict[int, tuple[int, int, int]] = {}
        self._scripts: dict[bool, Any] = {}

    def bucket(self, now: float) -> int:
        return int(now // self.window)

    def ttl(self, bucket: int, now: float) -> int:
        """Seconds a set of ``bucket`` is kept from ``now``: until the end of the next bucket (and 1 s)."""
        return max(1, math.ceil((bucket + 2) * self.window - now) + 1)

    def cached(self, partition: int, bucket: int) -> tuple[int, int] | None:
        """(S of ``bucket``, S of the bucket before or 0) as last read, when they are of ``bucket``."""
        known = self._sizes.get(partition)
        if known is None or known[0] != bucket:
            return None
        return known[1], known[2]

    def forget(self, partition: int) -> None:
        self._sizes.pop(partition, None)

    def _size_args(self, partition: int, bucket: int, least: int = 1) -> tuple[list[str], list[Any]]:
        stem = self.keys.seen_stem(partition, bucket - 1)
        keys = [self.keys.seen_sizes(partition), *(f"{stem}{shard}" for shard in range(SAMPLES))]
        ttl = 3 * self.window + 60
        return keys, [bucket, bucket - 1, bucket - 2, INITIAL_SHARDS, TARGET_FILL, MAX_SHARDS, ttl, least]

    def _script(self, client: Any) -> Any:
        kind = type(client).__module__.startswith("redis.asyncio")
        script = self._scripts.get(kind)
        if script is None:
            script = self._scripts[kind] = client.register_script(_SIZE_LUA)
        return script

    def _remember(self, partition: int, bucket: int, answer: Sequence[Any]) -> tuple[int, int]:
        sizes = int(answer[0]), int(answer[1])
        self._sizes[partition] = (bucket, *sizes)
        return sizes

    async def load(self, client: AsyncRedis, partitions: Iterable[int], bucket: int) -> None:
        """Read (or decide, for a bucket that starts now) the sizes of ``partitions``' ``bucket``: one round trip
        (EVALSHA, as the enqueue: one script per partition, each on its node on a cluster)."""
        wanted = [p for p in partitions if self.cached(p, bucket) is None]
        if not wanted:
            return
        scripts = [(_SIZE_LUA, *self._size_args(partition, bucket)) for partition in wanted]
        answers = await run_scripts(client, scripts)
        if any(isinstance(answer, NoScriptError) for answer in answers):  # loaded again by run_scripts
            answers = await run_scripts(client, scripts)
        for partition, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, BaseException):
                raise answer
            self._remember(partition, bucket, answer)

    def load_sync(self, client: Redis, partition: int, bucket: int, least: int = 1) -> tuple[int, int]:
        """:meth:`load` of one partition for a synchronous client (:func:`migrate`); a bucket sized now gets at
        least ``least`` sets."""
        keys, args = self._size_args(partition, bucket, least)
        return self._remember(partition, bucket, self._script(client)(keys=keys, args=args))

    def remembered(
        self, client: Redis, partition: int, write_key: str, message_id: str, *, now: float | None = None
    ) -> int | None:
        """Seconds for which a message is still taken for a duplicate (the TTL of the newest set that holds its
        marker), or None when it is not remembered: for tests and for operators' questions."""
        bucket = self.bucket(time.time() if now is None else now)
        member, shard = digest(write_key.encode("utf-8"), message_id)
        sizes = client.hmget(self.keys.seen_sizes(partition), [bucket, bucket - 1])
        for at, size in zip((bucket, bucket - 1), sizes, strict=True):
            if size is not None:
                name = self.keys.seen(partition, at, shard % int(size))
                if client.sismember(name, member.decode("ascii")):
                    return int(client.ttl(name))
        return None


def split_old_key(rest: str, write_keys: Sequence[str]) -> tuple[str, str]:
    """``<write key>:<messageId>`` of an old marker's key: the longest known write key that starts it, else the
    part before the first ``:``."""
    for write_key in sorted(write_keys, key=len, reverse=True):
        if rest.startswith(write_key + ":"):
            return write_key, rest[len(write_key) + 1 :]
    write_key, _, message_id = rest.partition(":")
    return write_key, message_id


def migrate(
    client: Redis,
    keys: Keys,
    partitions: int,
    window: int,
    write_keys: Sequence[str] = (),
    *,
    now: float | None = None,
    batch: int = 1000,
) -> int:
    """Convert the old layout's markers (a key per message) into compact ones; the number converted.

    An old key does not say the user, so neither the partition: each marker is added to its shard of the current
    bucket of **every** partition (8 B per partition for at most one window: no more than the old key cost), which
    keeps it at least its remaining window (a current set lives at least W more). In ordered steps per batch: the
    sets are written first, the old keys deleted after (a crash in between converts again, harmlessly). Keys of
    the old layout that expired meanwhile are skipped. ``write_keys``: the destinations' (to split a key whose
    write key holds a ``:``). A current bucket not sized yet (migrate run before ingest) is sized for them."""
    markers = Markers(keys, window)
    at = time.time() if now is None else now
    bucket = markers.bucket(at)
    ttl = markers.ttl(bucket, at)
    old_stem = keys.dedup("", "")[:-1]  # "<prefix>:dedup:"
    found = sum(1 for _ in client.scan_iter(match=f"{old_stem}*", count=batch))
    least = math.ceil(found / TARGET_FILL)
    sizes = [markers.load_sync(client, partition, bucket, least)[0] for partition in range(partitions)]
    stems = [keys.seen_stem(partition, bucket) for partition in range(partitions)]
    converted = 0
    pending: list[bytes] = []

    def flush() -> int:
        pipe = client.pipeline(transaction=False)
        for key in pending:
            pipe.exists(key)
        alive = [key for key, exists in zip(pending, pipe.execute(), strict=True) if exists]
        touched: set[str] = set()
        for key in alive:
            write_key, message_id = split_old_key(key.decode("utf-8")[len(old_stem) :], write_keys)
            member, shard = digest(write_key.encode("utf-8"), message_id)
            for stem, size in zip(stems, sizes, strict=True):
                name = f"{stem}{shard % size}"
                pipe.sadd(name, SENTINEL, member)
                touched.add(name)
        for name in touched:
            pipe.expire(name, ttl)
        pipe.execute()
        if alive:
            client.delete(*alive)
        pending.clear()
        return len(alive)

    for key in client.scan_iter(match=f"{old_stem}*", count=batch):
        pending.append(key)
        if len(pending) >= batch:
            converted += flush()
    if pending:
        converted += flush()
    return converted
