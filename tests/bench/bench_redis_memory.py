"""Redis memory per queued message, per dedup marker and per dead letter, for sizing Redis (deploy/runbook.md).

Writes N typical track messages (~420 bytes as accepted) through the real producer (``Producer.add``,
plain XADDs into the partition streams), N dedup markers through ingest's real write (``Producer.enqueue``, in
a bucket sized as its predecessor would size it: worker/store/dedup.py; tests/bench/bench_dedup.py compares the
old layout) and N/10 dead letters through the real store (``DeadLetterStore.add``), under a private key prefix,
measures ``MEMORY USAGE`` and the change of ``used_memory``, then deletes them.

    .venv/bin/python tests/bench/bench_redis_memory.py [N]
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
import uuid

import redis
import redis.asyncio

from worker.core.keys import Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.dedup import TARGET_FILL
from worker.store.letters import Letter
from worker.store.producer import Entry, Producer

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 100_000
PARTITIONS = 16


def message(i: int) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"user-{i % 5000}",
        "anonymousId": str(uuid.uuid4()),
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-28T20:00:00.000Z",
        "receivedAt": "2026-11-28T20:00:00.120Z",
        "properties": {"product_id": f"p-{i % 977}", "price": 19.99, "currency": "EUR", "category": "Shoes"},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "203.0.113.7"},
    }


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def enqueue_all(producer: Producer, entries: list[Entry]) -> None:
    client = redis.asyncio.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    for start in range(0, len(entries), 100):
        await producer.enqueue(client, entries[start : start + 100])
    await client.aclose()


def main() -> None:
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    keys = Keys(f"bench-mem-{uuid.uuid4().hex[:8]}")
    producer = Producer(keys, PARTITIONS, dedup_window=86_400)
    messages = [message(i) for i in range(N)]
    size = sum(len(producer.entry("wk_live_1", m).message) for m in messages) / N
    try:
        before = used(client)
        for start in range(0, N, 1000):
            pipe = client.pipeline(transaction=False)
            producer.add(pipe, [producer.entry("wk_live_1", m) for m in messages[start : start + 1000]])
            pipe.execute()
        streams_used = used(client) - before
        streams_usage = sum(int(client.memory_usage(keys.stream(p), samples=0) or 0) for p in range(PARTITIONS))
        # dedup markers through the real producer, in a bucket sized as the one before it would size it
        day = int(time.time() // 86_400)
        producer.clock = lambda: day * 86_400 + 10.0
        for p in range(PARTITIONS):
            client.hset(keys.seen_sizes(p), day, max(1, math.ceil(N / PARTITIONS / TARGET_FILL)))
        asyncio.run(enqueue_all(producer, [producer.entry("wk_live_1", m) for m in messages]))
        sets = list(client.scan_iter(match=f"{keys.prefix}:*:seen:{day}:*", count=1000))
        dedup_usage = sum(int(client.memory_usage(name, samples=0) or 0) for name in sets)
        for p in range(PARTITIONS):
            client.delete(keys.stream(p))
        store = DeadLetterStore(client, keys, retention_s=14 * 86_400)
        letters = N // 10
        before = used(client)
        now = time.time()
        for start in range(0, letters, 500):
            pipe = client.pipeline(transaction=True)
            for m in messages[start : min(start + 500, letters)]:
                letter = Letter.of("wk_live_1", m, "rejected", now=now, code=512, error="Invalid event structure")
                store.add(pipe, letter)
            pipe.execute()
        letters_used = used(client) - before
    finally:
        for p in range(PARTITIONS):
            client.delete(keys.stream(p))
        client.delete(keys.deadletters(), keys.deadletter_times(), keys.deadletter_reasons(), keys.deadletter_counts())
        for name in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
            client.delete(name)
        client.close()
    print(f"messages: {N}, average message as queued: {size:.0f} bytes (JSON)")
    entry_usage, entry_used = streams_usage / N, streams_used / N
    print(f"stream entry: MEMORY USAGE {entry_usage:.0f} B/message, used_memory delta {entry_used:.0f} B/message")
    print(f"dedup marker: MEMORY USAGE {dedup_usage / N:.0f} B/marker ({len(sets)} sets of ~{TARGET_FILL} markers)")
    print(f"dead letter: used_memory delta {letters_used / max(letters, 1):.0f} B/letter ({letters} letters)")
    print(f"ratio dedup marker / stream entry (MEMORY USAGE): {dedup_usage / max(streams_usage, 1):.2f}")
    print(f"measured at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")


if __name__ == "__main__":
    main()
