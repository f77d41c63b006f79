"""Redis CPU per message of the enqueue, old script vs new, and the old layout's script (for bench_dedup.py).

Requests of 100 messages over 16 partitions, markers in steady state (the previous bucket's sets at the sizing's
target, the current ones half way); ``used_cpu_user + used_cpu_sys`` deltas and ``INFO commandstats`` (commands
per message). Run through ``tests/bench/bench_dedup.py``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import redis
import redis.asyncio
from bench_redis_memory import message  # the typical track (~420 bytes as accepted)

from worker.core.keys import Keys
from worker.store import producer as producer_module
from worker.store.dedup import TARGET_FILL
from worker.store.producer import Producer

WINDOW = 86_400
PARTITIONS = 16

# The enqueue script of the old layout (a dedup key per message), as it was (commit 9eb7d65).
OLD_ENQUEUE_LUA = """
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


def cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drop_streams(client: redis.Redis, keys: Keys) -> None:
    client.delete(*[keys.stream(p) for p in range(PARTITIONS)])


COMMANDS: dict[str, str] = {}
"""Per run: the commands Redis ran per message (INFO commandstats; a script's commands counted apiece)."""


def cpu_rounds(url: str, client: redis.Redis, messages: int, rounds: int) -> dict[str, list[float]]:
    keys = Keys(f"bench-dedup-{uuid.uuid4().hex[:6]}")
    producer = Producer(keys, PARTITIONS, WINDOW)
    day = 30_000
    # steady state: a previous bucket of sets filled to the target (random members), this one half way (the sets
    # exist: one EXPIRE per set, not per message), sized the same
    sets = 512
    pipe = client.pipeline(transaction=False)
    for p in range(PARTITIONS):
        client.hset(keys.seen_sizes(p), mapping={day - 1: sets, day: sets})
        for shard in range(sets):
            pipe.sadd(keys.seen(p, day - 1, shard), 0, *[random.getrandbits(63) + 1 for _ in range(TARGET_FILL)])
            pipe.sadd(keys.seen(p, day, shard), 0, *[random.getrandbits(63) + 1 for _ in range(TARGET_FILL // 2)])
            pipe.expire(keys.seen(p, day, shard), 2 * WINDOW)
        pipe.execute()
    producer.clock = lambda: day * WINDOW + 10
    batches = [
        [producer.entry("wk_live_1", message(i)) for i in range(start, start + 100)]
        for start in range(0, messages, 100)
    ]
    old = client.register_script(OLD_ENQUEUE_LUA)
    results: dict[str, list[float]] = {"xadd": [], "old": [], "new": [], "fallback": []}

    def run_xadd() -> None:
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            producer.add(pipe, batch)
            pipe.execute()

    def run_old() -> None:
        for batch in batches:
            names: list[str] = []
            args: list[Any] = [WINDOW]
            for entry in batch:
                names += (keys.dedup("wk_live_1", str(uuid.uuid4())), entry.stream)
                args += (entry.write_key, entry.message)
            old(keys=names, args=args)

    def run_new() -> None:
        async def go() -> None:
            async_client = redis.asyncio.Redis.from_url(url)
            for batch in batches:
                fresh = [entry._replace(member=str(random.getrandbits(63) + 1).encode()) for entry in batch]
                await producer.enqueue(async_client, fresh)
            await async_client.aclose()

        asyncio.run(go())

    def run_fallback() -> None:
        """The new script with one more key lookup per message: what consulting the old markers would cost."""
        source = producer_module._ENQUEUE_LUA
        producer_module._ENQUEUE_LUA = source.replace(
            "local added = redis.call('SADD'",
            "redis.call('EXISTS', KEYS[k + 2 * e + 1] .. ':old')\n    local added = redis.call('SADD'",
        )
        try:
            run_new()
        finally:
            producer_module._ENQUEUE_LUA = source

    for _ in range(rounds):
        for name, run in (("xadd", run_xadd), ("old", run_old), ("new", run_new), ("fallback", run_fallback)):
            client.config_resetstat()
            before = cpu(client)
            run()
            results[name].append((cpu(client) - before) / messages * 1e6)
            stats = client.info("commandstats")
            COMMANDS[name] = ", ".join(
                f"{key.removeprefix('cmdstat_')} {value['calls'] / messages:.2f}"
                for key, value in stats.items()
                if value["calls"] / messages >= 0.005 and "info" not in key and "config" not in key
            )
            drop_streams(client, keys)
    for name in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        client.delete(name)
    return results
