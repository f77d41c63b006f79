"""The producer (worker/store/producer.py) against the real Redis: dedup and XADD in one script, the backlog measure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

from worker.core.keys import GROUP, Envelope, Keys, partition_of
from worker.core.settings import Settings
from worker.store.connections import connect_async
from worker.store.dedup import Markers
from worker.store.producer import Producer
from worker.store.retries import RetryItem, RetrySchedule

pytestmark = pytest.mark.integration


def message(user: str, message_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "E", "messageId": message_id}


async def enqueue(url: str, producer: Producer, entries: list[Any]) -> list[bytes | None]:
    client = connect_async(Settings(REDIS_URL=url), timeout_s=1.0)
    try:
        return await producer.enqueue(client, entries)
    finally:
        await client.aclose()


async def backlog(url: str, producer: Producer) -> int:
    """The backlog measured as ingest measures it (asynchronous client)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        return await producer.backlog(client)
    finally:
        await client.aclose()


def test_enqueue_writes_each_message_once_per_write_key(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """Either way of one Redis (a MULTI of XADDs and the marker script, or the enqueue script) answers alike."""
    producer = Producer(keys, 4, dedup_window=600)
    first = [producer.entry("wk", message("alice", "m1")), producer.entry("wk", message("bob", "m2"))]
    again = [
        producer.entry("wk", message("alice", "m1")),  # a retry: dropped
        producer.entry("other", message("alice", "m1")),  # another write key: kept
        producer.entry("wk", message("carol", "m3")),
        producer.entry("wk", message("carol", "m3")),  # twice in one request: once
    ]
    assert all(asyncio.run(enqueue(redis_url, producer, first)))
    written = asyncio.run(enqueue(redis_url, producer, again))
    assert [result is not None for result in written] == [False, True, True, False]

    stream = keys.stream(partition_of("alice", 4))
    entries = [Envelope.decode(fields) for _, fields in redis_client.xrange(stream)]
    alices = [(e.write_key, e.message["messageId"]) for e in entries if e.message["userId"] == "alice"]
    assert alices == [("wk", "m1"), ("other", "m1")]
    # remembered for the window at least, and at most two (its bucket's sets expire as a whole)
    left = Markers(keys, 600).remembered(redis_client, partition_of("alice", 4), "wk", "m1") or 0
    assert 600 <= left <= 2 * 600 + 1
    assert Markers(keys, 600).remembered(redis_client, partition_of("bob", 4), "wk", "m1") is None  # not its partition
    assert asyncio.run(enqueue(redis_url, producer, [])) == []


def test_a_failed_xadd_leaves_no_dedup_marker(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """A write Redis refuses (503 to the client) must not make the client's retry look like a duplicate."""
    producer = Producer(keys, 1, dedup_window=600)
    entries = [producer.entry("wk", message("alice", "m1")), producer.entry("wk", message("bob", "m2"))]
    redis_client.set(keys.stream(0), "not a stream")  # every XADD fails with WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        asyncio.run(enqueue(redis_url, producer, entries))
    assert Markers(keys, 600).remembered(redis_client, 0, "wk", "m1") is None
    assert Markers(keys, 600).remembered(redis_client, 0, "wk", "m2") is None
    redis_client.delete(keys.stream(0))
    assert all(asyncio.run(enqueue(redis_url, producer, entries)))  # the retry is taken, not dropped
    assert [Envelope.decode(f).message["messageId"] for _, f in redis_client.xrange(keys.stream(0))] == ["m1", "m2"]


def test_add_queues_plain_xadds_without_dedup(keys: Keys, redis_client: redis.Redis) -> None:
    producer = Producer(keys, 4, dedup_window=600)
    pipe = redis_client.pipeline(transaction=True)
    producer.add(pipe, [producer.entry("wk", message("alice", "m1"))] * 2)
    pipe.execute()
    assert redis_client.xlen(keys.stream(partition_of("alice", 4))) == 2
    assert Markers(keys, 600).remembered(redis_client, partition_of("alice", 4), "wk", "m1") is None


def test_backlog_is_what_the_streams_hold(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """Workers delete what they acknowledge (one MULTI): the streams' lengths are the undelivered entries."""
    producer = Producer(keys, 2, dedup_window=600)
    users = [f"user-{i}" for i in range(10)]
    asyncio.run(enqueue(redis_url, producer, [producer.entry("wk", message(u, u)) for u in users]))
    assert producer.backlog_sync(redis_client) == 10  # no consumer group yet: the stream lengths

    stream = keys.stream(0)
    length = redis_client.xlen(stream)
    redis_client.xgroup_create(stream, GROUP, id="0")
    read = redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=2)
    ids = [entry_id for entry_id, _ in read[0][1]]
    assert producer.backlog_sync(redis_client) == 10  # 2 pending + the unread rest
    redis_client.xack(stream, GROUP, ids[0])
    redis_client.xdel(stream, ids[0])
    assert producer.backlog_sync(redis_client) == 9
    redis_client.xack(stream, GROUP, ids[1])
    redis_client.xdel(stream, ids[1])
    assert producer.backlog_sync(redis_client) == 10 - 2
    assert length >= 2

    assert asyncio.run(backlog(redis_url, producer)) == 8


def test_backlog_counts_the_retry_schedule(redis_url: str, keys: Keys, redis_client: redis.Redis) -> None:
    """During a CleverTap outage messages leave the streams (acknowledged) for the retry schedule: still backlog."""
    producer = Producer(keys, 2, dedup_window=600)
    asyncio.run(enqueue(redis_url, producer, [producer.entry("wk", message("alice", "m1"))]))
    assert producer.backlog_sync(redis_client) == 1

    pipe = redis_client.pipeline(transaction=True)
    for partition, count in ((0, 3), (1, 2)):
        schedule = RetrySchedule(redis_client, keys, partition)
        for i in range(count):
            item = RetryItem(f"wk\nr{partition}-{i}", "wk", message("u", f"r{i}"), [], 1, 1.0, 1.0)
            schedule.put(pipe, item, due=1e12)
    pipe.execute()
    assert producer.backlog_sync(redis_client) == 1 + 3 + 2

    assert asyncio.run(backlog(redis_url, producer)) == 6
    pipe = redis_client.pipeline(transaction=True)
    RetrySchedule(redis_client, keys, 0).remove(pipe, ["wk\nr0-0"])
    pipe.execute()
    assert producer.backlog_sync(redis_client) == 5


@pytest.mark.parametrize(("shards", "previous"), [(64, 0), (64, 16), (5000, 7000), (3, 9000)])
def test_a_calls_keys_name_each_entrys_marker_sets(keys: Keys, shards: int, previous: int) -> None:
    """KEYS per partition: its sizes hash, its stream, then per entry its set of the current bucket (and of the
    previous one when that bucket has sets): ``seen_stem(partition, bucket)`` and the shard hash modulo S, the names
    made once per bucket up to a bound, per entry beyond it."""
    producer = Producer(keys, 4, dedup_window=600)
    now = 1_000_000.0
    bucket = producer.markers.bucket(now)
    entries = [producer.entry("wk", message(f"user-{i % 7}", f"m{i}")) for i in range(60)]
    groups: dict[tuple[int, bytes], list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault((entry.partition, entry.write_key), []).append(index)
    for partition, _ in groups:
        producer.markers._sizes[partition] = (bucket, shards, previous)
    for _ in range(2):  # (the second time from the names made the first)
        _, got, args = producer._call(entries, groups, set(), list(groups), bucket=bucket, now=now)
        expected: list[str] = []
        parts: list[Any] = []
        for (partition, _), indexes in groups.items():
            expected += (keys.seen_sizes(partition), keys.stream(partition))
            for index in indexes:
                shard = entries[index].shard
                expected.append(f"{keys.seen_stem(partition, bucket)}{shard % shards}")
                if previous:
                    expected.append(f"{keys.seen_stem(partition, bucket - 1)}{shard % previous}")
                parts += (entries[index].member, entries[index].message)
        assert got == expected
        assert [arg for arg in args if isinstance(arg, bytes) and arg != b"wk"] == parts
