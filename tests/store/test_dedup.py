"""Compact dedup markers (worker/store/dedup.py) against the real Redis: buckets, sizing, new sets' expiry, stale
sizes, the ordered suppression step, the old layout's migration; and the scripts on fakeredis (``ctrelay dev``)."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from worker.core.keys import Envelope, Keys, partition_of
from worker.store.dedup import TARGET_FILL, Markers, digest, migrate, split_old_key
from worker.store.producer import Entry, Producer

pytestmark = pytest.mark.integration

WINDOW = 600


def message(user: str, message_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "E", "messageId": message_id}


def run(url: str, producer: Producer, entries: list[Entry], suppress: Any = None) -> list[bytes | None]:
    async def go() -> list[bytes | None]:
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await producer.enqueue(client, entries, suppress)
        finally:
            await client.aclose()

    return asyncio.run(go())


def at(producer: Producer, now: float) -> Producer:
    producer.clock = lambda: now
    return producer


def test_the_digest_is_a_nonzero_64_bit_integer_and_splits_on_nothing_else() -> None:
    member, shard = digest(b"wk", "m1")
    assert -(2**63) <= int(member) < 2**63
    assert int(member) != 0
    assert 0 <= shard < 2**32
    assert digest(b"wk", "m1") == (member, shard)
    assert digest(b"wk:m", "1")[0] != digest(b"wk", "m:1")[0]  # the separator is not ':'


@pytest.mark.parametrize("write_key", [b"wk", b"", "cl\u00e9".encode(), b"wk\n"])
@pytest.mark.parametrize("message_id", ["m1", "", "\u00e9t\u00e9-42", "0b3c7a2e-5d6f-4a1b-9c8d-7e6f5a4b3c2d"])
def test_the_digest_is_blake2b_of_the_write_key_a_newline_and_the_message_id(write_key: bytes, message_id: str) -> None:
    """The markers already in Redis were made so: the digest (a copy of a hash fed the write key) must not change."""
    raw = hashlib.blake2b(write_key + b"\n" + message_id.encode("utf-8"), digest_size=12).digest()
    member, shard = struct.unpack("<qI", raw)
    for _ in range(2):  # (the second time from the write key's cached hash)
        assert digest(write_key, message_id) == (str(member or 1).encode("ascii"), shard)


def test_a_marker_outlives_its_bucket_by_one_and_no_more(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """Checked against the current and the previous bucket: remembered at least the window, at most two."""
    start = 1_000_000 * WINDOW + WINDOW - 1  # the last second of a bucket
    producer = at(Producer(keys, 2, dedup_window=WINDOW), start)
    entry = producer.entry("wk", message("alice", "m1"))
    assert run(redis_url, producer, [entry])[0] is not None
    assert run(redis_url, at(producer, start + WINDOW), [entry]) == [None]  # next bucket: still a duplicate
    # a fresh process (nothing cached) one window and a second later: still a duplicate (the previous bucket)
    assert run(redis_url, at(Producer(keys, 2, dedup_window=WINDOW), start + WINDOW + 1), [entry]) == [None]
    # the sets of the first bucket expire at the end of the next: a marker is never held past 2 windows
    first = keys.seen(partition_of("alice", 2), 1_000_000, entry.shard % 64)
    assert 0 < redis_client.ttl(first) <= 2 * WINDOW + 1
    assert redis_client.object("encoding", first) == b"intset"


def test_a_bucket_is_sized_from_the_one_before(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """The first bucket gets the initial 64 sets; the next as many as hold ~TARGET_FILL each of what came."""
    now = 2_000_000 * WINDOW
    producer = at(Producer(keys, 1, dedup_window=WINDOW), now)
    count = 64 * TARGET_FILL * 3  # three times what the first bucket was sized for
    for start in range(0, count, 500):
        entries = [producer.entry("wk", message("u", f"m{i}")) for i in range(start, min(start + 500, count))]
        assert all(run(redis_url, producer, entries))
    sizes = keys.seen_sizes(0)
    assert redis_client.hget(sizes, 2_000_000) == b"64"
    assert run(redis_url, at(producer, now + WINDOW), [producer.entry("wk", message("u", "new"))])[0] is not None
    assert 0.8 * 3 * 64 <= int(redis_client.hget(sizes, 2_000_001) or 0) <= 1.25 * 3 * 64
    # every marker of the first bucket is still found from the second (the sets are looked up by their own size)
    again = [producer.entry("wk", message("u", f"m{i}")) for i in range(0, count, 97)]
    assert run(redis_url, producer, again) == [None] * len(again)
    assert redis_client.hget(sizes, 1_999_999) is None  # forgotten: sizes of gone buckets are deleted


def test_stale_sizes_are_reloaded_and_the_write_retried(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """A process that cached a bucket's size another process's decision replaced is refused and retries."""
    now = 3_000_000 * WINDOW
    one = at(Producer(keys, 1, dedup_window=WINDOW), now)
    assert all(run(redis_url, one, [one.entry("wk", message("u", "m1"))]))
    redis_client.hset(keys.seen_sizes(0), 3_000_000, 64)  # unchanged: the cache is right
    assert run(redis_url, one, [one.entry("wk", message("u", "m1"))]) == [None]
    redis_client.hset(keys.seen_sizes(0), 3_000_000, 5)  # as if decided otherwise: one's cache is stale
    written = run(redis_url, one, [one.entry("wk", message("u", "m2"))])
    assert written[0] is not None
    assert one.markers.cached(0, 3_000_000) == (5, 0)
    # the refused attempt kept nothing (a stale size is refused before the script writes anything)
    assert [Envelope.decode(f).message["messageId"] for _, f in redis_client.xrange(keys.stream(0))] == ["m1", "m2"]


def test_suppressions_follow_the_stream_writes(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """A new deletion: its fields (version raised), then its pending key deleted. A duplicate writes its fields only
    while its pending key is there (an earlier attempt failed between the steps): a finished one, never again."""
    producer = Producer(keys, 2, dedup_window=WINDOW)
    hash_key = keys.suppressed("wk")
    deletion = producer.entry("wk", message("alice", "d1"))
    pending = keys.seen_pending(deletion.partition, deletion.member.decode())
    fields = {0: {"i:alice": "9e9|1|track"}}
    assert run(redis_url, producer, [deletion], (hash_key, "v", fields))[0] is not None
    assert redis_client.hgetall(hash_key) == {b"i:alice": b"9e9|1|track", b"v": b"1"}
    assert not redis_client.exists(pending)
    # a retry of the request that succeeded (after an unsuppress, say): a duplicate, nothing written
    redis_client.hdel(hash_key, "i:alice")
    assert run(redis_url, producer, [deletion], (hash_key, "v", fields)) == [None]
    assert redis_client.hgetall(hash_key) == {b"v": b"1"}
    # as if the first attempt had stopped before its suppression step (503): the retry writes it
    redis_client.set(pending, b"1", ex=WINDOW)
    assert run(redis_url, producer, [deletion], (hash_key, "v", fields)) == [None]
    assert redis_client.hgetall(hash_key) == {b"i:alice": b"9e9|1|track", b"v": b"2"}
    assert not redis_client.exists(pending)
    # a deletion among other entries of its partition: its own flag, the others' streams written
    other = producer.entry("wk", message("alice", "t1"))
    late = producer.entry("wk", message("alice", "d2"))
    answer = run(redis_url, producer, [other, late], (hash_key, "v", {1: {"i:alice": "9e9|2|track"}}))
    assert all(answer)
    assert redis_client.hget(hash_key, "i:alice") == b"9e9|2|track"


@pytest.mark.parametrize("per_partition", [False, True])
def test_a_call_per_request_or_per_partition_answers_alike(
    redis_url: str, keys: Keys, redis_client: redis.Redis, per_partition: bool
) -> None:
    """A cluster's way (a script per partition, pipelined) and one Redis's (a MULTI, or a script for the request)
    agree."""
    producer = Producer(keys, 4, dedup_window=WINDOW)
    producer.per_partition = per_partition
    users = ["alice", "bob", "carol", "dave", "erin", "frank"]
    assert len({partition_of(u, 4) for u in users}) > 1
    entries = [producer.entry("wk", message(u, f"m-{u}")) for u in users]
    deletion = producer.entry("wk", message("bob", "d1"))
    hash_key = keys.suppressed("wk")
    suppress = (hash_key, "v", {len(entries): {"i:bob": "9e9|1|track"}})
    assert all(run(redis_url, producer, [*entries, deletion], suppress))
    again = run(redis_url, producer, [entries[2], producer.entry("wk", message("carol", "new")), entries[0]])
    assert [w is not None for w in again] == [False, True, False]
    assert redis_client.hget(hash_key, "i:bob") == b"9e9|1|track"
    assert sum(redis_client.xlen(keys.stream(p)) for p in range(4)) == len(users) + 2


def test_one_call_mixes_partitions_with_and_without_a_previous_bucket(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """A partition whose previous bucket has sets is checked against it (its KEYS carry that set per entry), one
    without passes none: in one call, entries, duplicates and deletions of both land on their own answers."""
    start = 2_000_000 * WINDOW + 10
    producer = at(Producer(keys, 4, dedup_window=WINDOW), start)
    producer.per_partition = False
    users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    old, fresh = users[0], next(u for u in users if partition_of(u, 4) != partition_of(users[0], 4))
    earlier = [producer.entry("wk", message(old, f"early-{n}")) for n in range(3)]
    assert all(run(redis_url, producer, earlier))
    at(producer, start + WINDOW)  # the next bucket: the old user's partition has a previous one, the other none
    hash_key = keys.suppressed("wk")
    entries = [
        producer.entry("wk", message(fresh, "f1")),
        earlier[1],
        producer.entry("wk", message(old, "o1")),
        producer.entry("wk", message(fresh, "fd")),
        earlier[2],
        producer.entry("wk", message(old, "od")),
        producer.entry("wk", message(fresh, "f2")),
    ]
    fields = {3: {f"i:{fresh}": "9e9|1|track"}, 5: {f"i:{old}": "9e9|1|track"}}
    answer = run(redis_url, producer, entries, (hash_key, "v", fields))
    assert [w is not None for w in answer] == [True, False, True, True, False, True, True]
    suppressed = {f"i:{fresh}".encode(): b"9e9|1|track", f"i:{old}".encode(): b"9e9|1|track", b"v": b"1"}
    assert redis_client.hgetall(hash_key) == suppressed
    streams = {
        p: [Envelope.decode(fields).message["messageId"] for _, fields in redis_client.xrange(keys.stream(p))]
        for p in range(4)
    }
    assert streams[partition_of(fresh, 4)] == ["f1", "fd", "f2"]
    assert streams[partition_of(old, 4)] == ["early-0", "early-1", "early-2", "o1", "od"]
    assert run(redis_url, producer, entries) == [None] * len(entries)


def test_migrate_converts_old_markers_keeping_their_window(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    redis_client.set(keys.dedup("wk", "m1"), b"1", ex=300)
    redis_client.set(keys.dedup("wk:with:colons", "m:2"), b"1", ex=500)
    redis_client.set(keys.dedup("other", "m3"), b"1", ex=100)
    assert migrate(redis_client, keys, 4, WINDOW, ["wk", "wk:with:colons"]) == 3
    assert not list(redis_client.scan_iter(match=f"{keys.dedup('', '')[:-1]}*"))
    producer = Producer(keys, 4, dedup_window=WINDOW)
    for user in ("alice", "bob", "carol", "dave"):  # every partition: the old key did not say the user
        entries = [producer.entry(wk, message(user, mid)) for wk, mid in (("wk", "m1"), ("wk:with:colons", "m:2"))]
        assert run(redis_url, producer, entries) == [None, None]
        assert (Markers(keys, WINDOW).remembered(redis_client, partition_of(user, 4), "other", "m3") or 0) >= 100
    assert run(redis_url, producer, [producer.entry("wk", message("alice", "m3"))])[0] is not None  # other key
    assert migrate(redis_client, keys, 4, WINDOW) == 0  # nothing left: a second run converts nothing


def test_split_old_key_prefers_known_write_keys() -> None:
    assert split_old_key("wk:a:b:m1", ["wk", "wk:a"]) == ("wk:a", "b:m1")
    assert split_old_key("plain:m:1", []) == ("plain", "m:1")


def test_the_scripts_run_on_fakeredis(keys: Keys) -> None:
    """``ctrelay dev`` without a redis-server: the same scripts on the in-process fakeredis."""
    server = fakeredis.FakeServer()
    producer = Producer(keys, 2, dedup_window=WINDOW)

    async def go() -> tuple[list[bytes | None], list[bytes | None]]:
        client = fakeredis.aioredis.FakeRedis(server=server)
        entries = [producer.entry("wk", message(u, u)) for u in ("alice", "bob", "alice")]
        first = await producer.enqueue(client, entries)
        second = await producer.enqueue(client, entries[:2])
        await client.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert [w is not None for w in first] == [True, True, False]
    assert second == [None, None]
    sync = fakeredis.FakeRedis(server=server)
    stream = keys.stream(partition_of("alice", 2))
    assert [Envelope.decode(f).message["userId"] for _, f in sync.xrange(stream)].count("alice") == 1


def test_one_set_per_bucket_duplicates_in_the_call_and_in_the_previous_bucket(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    """Buckets of one set (a quiet partition): every message of a call shares its marker set and the previous
    bucket's. The first of a messageId in the call wins, one in the previous bucket is a duplicate, a deletion's flag
    lands on its own answer; a failed XADD leaves no marker in the shared set, for that message or a later one."""
    bucket = 4_000_000
    start = bucket * WINDOW + 10
    redis_client.hset(keys.seen_sizes(0), mapping={bucket - 1: 1, bucket: 1})
    producer = at(Producer(keys, 1, dedup_window=WINDOW), start - WINDOW)
    old = producer.entry("wk", message("u", "old"))
    assert all(run(redis_url, producer, [old]))
    at(producer, start)
    new, other, deletion = (producer.entry("wk", message("u", m)) for m in ("new", "other", "d1"))
    hash_key = keys.suppressed("wk")
    fields = {4: {"i:u": "9e9|1|track"}}
    answer = run(redis_url, producer, [new, old, new, other, deletion, old], (hash_key, "v", fields))
    assert [w is not None for w in answer] == [True, False, False, True, True, False]
    assert producer.markers.cached(0, bucket) == (1, 1)
    assert redis_client.hget(hash_key, "i:u") == b"9e9|1|track"
    ids = [Envelope.decode(f).message["messageId"] for _, f in redis_client.xrange(keys.stream(0))]
    assert ids == ["old", "new", "other", "d1"]
    assert [entry_id for entry_id, _ in redis_client.xrange(keys.stream(0))][1:] == [answer[0], answer[3], answer[4]]

    first, second = producer.entry("wk", message("u", "f1")), producer.entry("wk", message("u", "f2"))
    moved = f"{keys.prefix}:moved"  # (the stream put aside, under the test's prefix)
    redis_client.rename(keys.stream(0), moved)
    redis_client.set(keys.stream(0), "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        run(redis_url, producer, [first, second])
    markers = Markers(keys, WINDOW)
    assert markers.remembered(redis_client, 0, "wk", "f1", now=start) is None
    assert markers.remembered(redis_client, 0, "wk", "f2", now=start) is None
    assert markers.remembered(redis_client, 0, "wk", "new", now=start) is not None
    redis_client.delete(keys.stream(0))
    redis_client.rename(moved, keys.stream(0))
    assert all(run(redis_url, producer, [first, second]))
