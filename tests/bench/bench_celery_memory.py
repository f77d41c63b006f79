"""Redis memory per queued message: a relay stream entry vs one Celery task message, side by side in one Redis.

Run: ``.venv/bin/python tests/bench/bench_celery_memory.py [N]`` (default 20000)

Starts a ``redis-server`` of its own (so that ``used_memory`` is this script's alone), then queues the same
N track messages (~420 bytes as accepted, the shape ``bench_redis_memory.py`` uses) twice: as the relay's
producer does (pipelined XADDs into 16 partition streams) and as the naive baseline of
``bench_delivery.py`` does (``send_task`` of one ``naive.deliver`` task per message on a Celery Redis
broker: a kombu message in a list). Prints bytes per message for each (``used_memory`` delta, and
``MEMORY USAGE`` of the keys) and their ratio. Nothing is asserted.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_delivery import naive_app  # noqa: E402
from bench_redis_memory import message  # noqa: E402

from worker.cli.embedded import redis_server  # noqa: E402
from worker.core.keys import Keys  # noqa: E402
from worker.store.producer import Producer  # noqa: E402

PARTITIONS = 16


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    messages = [message(i) for i in range(count)]
    with redis_server(shutil.which("redis-server") or "redis-server") as handle:
        client = redis.Redis.from_url(handle.url)
        keys = Keys(f"bench-celery-mem-{uuid.uuid4().hex[:8]}")
        producer = Producer(keys, PARTITIONS, dedup_window=86_400)
        size = sum(len(producer.entry("wk_live_1", m).message) for m in messages) / count

        before = used(client)
        for start in range(0, count, 1000):
            with client.pipeline(transaction=False) as pipe:
                producer.add(pipe, [producer.entry("wk_live_1", m) for m in messages[start : start + 1000]])
                pipe.execute()
        stream_used = (used(client) - before) / count
        stream_usage = sum(int(client.memory_usage(keys.stream(p), samples=0) or 0) for p in range(PARTITIONS)) / count

        queue = f"bench-celery-mem-{uuid.uuid4().hex[:8]}"
        app = naive_app(handle.url, queue)
        before = used(client)
        started = time.perf_counter()
        with app.producer_or_acquire() as celery_producer:
            for m in messages:
                app.send_task("naive.deliver", args=("wk_live_1", m), queue=queue, producer=celery_producer)
        send_s = time.perf_counter() - started
        celery_used = (used(client) - before) / count
        lists = [key for key in client.scan_iter(match=f"{queue}*") if client.type(key) == b"list"]
        celery_usage = sum(int(client.memory_usage(key, samples=0) or 0) for key in lists) / count
        sample = client.lindex(lists[0], 0) if lists else b""
        client.close()

    print(f"messages: {count}, average message as queued by the relay: {size:.0f} bytes (JSON)")
    print(f"relay stream entry:   used_memory {stream_used:6.0f} B/message, MEMORY USAGE {stream_usage:6.0f} B/message")
    print(f"one Celery message:   used_memory {celery_used:6.0f} B/message, MEMORY USAGE {celery_usage:6.0f} B/message"
          f"  (kombu envelope {len(sample or b''):,} bytes; send_task {count / send_s:,.0f} msgs/s)")  # fmt: skip
    print(f"ratio Celery / stream (used_memory): {celery_used / stream_used:.2f} x")


if __name__ == "__main__":
    main()
