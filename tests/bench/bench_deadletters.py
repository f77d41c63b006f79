"""Dead-letter store at scale: write, stats, filtered list, export and replay of N letters, and memory per letter.

Run: ``.venv/bin/python tests/bench/bench_deadletters.py [N]`` (default 100000) against ``REDIS_URL``
(default 127.0.0.1:6379), under a unique key prefix that is deleted afterwards. Prints figures only.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from worker.core.destinations import Destination, Destinations
from worker.core.keys import Keys
from worker.ops import deadletters as dlq
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Filter, Letter

PARTITIONS = 16


def letters(count: int, now: float) -> list[Letter]:
    out = []
    for i in range(count):
        message = {
            "type": "track",
            "event": f"Event {i % 20}",
            "userId": f"user-{i % 5000}",
            "messageId": uuid.uuid4().hex,
            "timestamp": "2026-11-28T20:00:00Z",
            "context": {"library": {"name": "analytics-python", "version": "2.3.4"}, "ip": "203.0.113.9"},
            "properties": {"plan": "pro", "amount": i % 977, "sku": f"SKU-{i % 300}"},
        }
        reason = ("auth_failed", "rejected", "retries_exhausted")[i % 3]
        out.append(
            Letter.of(f"wk{i % 4}", message, reason, code=523 if reason == "rejected" else None, status=401,
                      error="HTTP 401", attempts=5, now=now - count + i)
        )  # fmt: skip
    return out


def timed(label: str, count: int, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {elapsed:8.3f} s  {count / elapsed:>12,.0f} letters/s")
    return result


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    keys = Keys(f"bench-dlq-{uuid.uuid4().hex[:8]}")
    store = DeadLetterStore(client, keys)
    destinations = Destinations([Destination(write_key=f"wk{i}", account_id=f"A{i}", passcode="p") for i in range(4)])
    try:
        batch = letters(count, time.time())
        timed(f"put {count:,} letters (MULTI of 1000)", count, lambda: store.put(batch))
        memory = sum(
            int(client.memory_usage(key) or 0)
            for key in (
                keys.deadletters(),
                keys.deadletter_times(),
                keys.deadletter_reasons(),
                keys.deadletter_counts(),
            )
        )
        print(f"{'memory per letter (4 keys)':<44} {memory / count:8.0f} bytes")
        timed("stats, all letters", count, lambda: dlq.stats(store, Filter()))
        timed("stats --reason rejected (scans all)", count, lambda: dlq.stats(store, Filter(reason="rejected")))
        timed("list newest 100", 100, lambda: list(store.scan(Filter(limit=100))))
        timed("list --since (last 1%)", count // 100, lambda: list(store.scan(Filter(since=time.time() - count / 100))))
        timed("export, all letters", count, lambda: sum(len(line) for line in dlq.export(store, Filter())))
        producer = dlq.replay_producer(keys, PARTITIONS)
        result = timed("replay --all --rate 0", count, lambda: dlq.replay(store, producer, destinations, Filter()))
        assert result.replayed == count
        assert store.count() == 0
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
            client.delete(key)


if __name__ == "__main__":
    main()
