r"""Dedup markers and the enqueue script, old layout against new, side by side in one run on a Redis of its own.

Run: ``.venv/bin/python tests/bench/bench_dedup.py [--markers 540000] [--messages 40000] [--rounds 3]``

Starts ``redis-server``\s of its own on free ports, a fresh one per memory case (so that ``used_memory`` and the
CPU are this benchmark's, and no dict still rehashing from an earlier case is counted).

- **Bytes per dedup marker**, measured as the change of ``used_memory`` (the streams the scripts also write are
  trimmed as it goes and deleted before measuring). ``--markers`` is one partition's share of one window: 540,000
  = 100 msgs/s x 86,400 s / 16 partitions. Old: the old script (kept here: ``SET NX EX`` key per message + XADD).
  New, through the real :class:`~worker.store.producer.Producer` (its clock set), in a bucket sized as sizing
  from a predecessor of as many markers decides (the steady state); and a partition's first bucket (no
  predecessor: 64 sets), with the size the next bucket then gets. At 10,000 msgs/s a partition's bucket holds
  100x as many, split into 100x as many sets: the bench writes ``--markers`` of them into the first 1 % of those
  sets (its sizes hash set so), i.e. the same sets Redis would hold, a hundredth of them.
  The new layout holds between 1 and 2 windows of markers (buckets expire as a whole): per message accepted in
  the window that is 1.5x the bytes per marker on average, 2x at worst; the old one holds exactly one window.
- **Bytes per queued message**: ``MEMORY USAGE`` of the streams / entries (the envelope is the same in both), at
  Redis's default ``stream-node-max-bytes`` (4096) and at 16384.
- **Redis CPU per message** of the enqueue (``used_cpu_user + used_cpu_sys`` deltas, and ``INFO commandstats``:
  commands per message): requests of 100 messages over 16 partitions, markers in steady state (the previous
  bucket's sets at the sizing's target, the current ones half way); the old script (one call per request) vs the
  new one (one call per request on one Redis; a cluster makes it one per partition); a plain pipelined XADD
  beside them. Rounds interleave.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from enqueue_cpu import (  # noqa: E402
    COMMANDS,
    OLD_ENQUEUE_LUA,
    PARTITIONS,
    WINDOW,
    cpu_rounds,
    drop_streams,
    message,
)
from machine import code_version, load_average  # noqa: E402

from worker.cli.embedded import free_port  # noqa: E402
from worker.core.keys import Keys  # noqa: E402
from worker.store.dedup import TARGET_FILL  # noqa: E402
from worker.store.producer import Entry, Producer  # noqa: E402


def used(client: redis.Redis) -> int:
    time.sleep(0.2)  # lazy frees settle
    return int(client.info("memory")["used_memory"])


def old_markers(client: redis.Redis, keys: Keys, count: int) -> float:
    """B/marker of the old layout: the old script, a request of 100 at a time."""
    drop_streams(client, keys)
    before = used(client)
    script = client.register_script(OLD_ENQUEUE_LUA)
    body = Producer(keys, 1, WINDOW).entry("wk_live_1", message(0)).message
    for start in range(0, count, 100):
        names: list[str] = []
        args: list[Any] = [WINDOW]
        for _ in range(min(100, count - start)):
            names += (keys.dedup("wk_live_1", str(uuid.uuid4())), keys.stream(0))
            args += (b"wk_live_1", body)
        script(keys=names, args=args)
        if start % 10_000 == 0:
            client.xtrim(keys.stream(0), maxlen=0)
    drop_streams(client, keys)
    return (used(client) - before) / count


def new_bucket(url: str, producer: Producer, entries: list[Entry], client: redis.Redis) -> float:
    """B/marker of one bucket written through the real producer (streams trimmed as it goes)."""
    keys = producer.keys

    async def go() -> None:
        async_client = redis.asyncio.Redis.from_url(url)
        for start in range(0, len(entries), 100):
            await producer.enqueue(async_client, entries[start : start + 100])
            if start % 10_000 == 0:
                await async_client.xtrim(keys.stream(0), maxlen=0)
        await async_client.aclose()

    drop_streams(client, keys)
    before = used(client)
    asyncio.run(go())
    drop_streams(client, keys)
    return (used(client) - before) / len(entries)


@contextlib.contextmanager
def server() -> Iterator[tuple[str, redis.Redis]]:
    """A fresh ``redis-server`` (no persistence) on a free port: nothing else in its memory; stopped after."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as scratch:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", scratch],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield url, client
        finally:
            client.close()
            process.terminate()
            process.wait()


def sets_usage(client: redis.Redis, keys: Keys) -> tuple[float, float]:
    """MEMORY USAGE of the marker sets under ``keys``, and the share of them that are intsets."""
    total, intsets, count = 0, 0, 0
    for name in client.scan_iter(match=f"{keys.prefix}:*:seen:*:*", count=1000):
        total += int(client.memory_usage(name, samples=0) or 0)
        intsets += client.object("encoding", name) == b"intset"
        count += 1
    return float(total), intsets / max(1, count)


def memory(count: int) -> dict[str, float]:
    """Each layout and case in a Redis of its own (a dict still rehashing from a previous case would count)."""
    figures: dict[str, float] = {}
    keys = Keys(f"bench-dedup-{uuid.uuid4().hex[:6]}")
    day = 20_000
    with server() as (_, client):
        figures["old"] = old_markers(client, keys, count)
    sets = math.ceil(count / TARGET_FILL)  # what sizing from a predecessor of ``count`` markers decides
    for name, factor in (("100", 1), ("10k", 100)):
        # 10,000 msgs/s: 100x the markers in 100x the sets; the first 1 % of those sets, as Redis would hold them
        with server() as (url, client):
            producer = Producer(keys, 1, WINDOW)
            producer.clock = lambda: day * WINDOW + 10
            client.hset(keys.seen_sizes(0), day, sets * factor)
            entries = []
            for i in range(count):
                entry = producer.entry("wk_live_1", message(i))
                entries.append(entry._replace(shard=entry.shard % sets) if factor > 1 else entry)
            figures[f"steady_{name}"] = new_bucket(url, producer, entries, client)
            figures[f"usage_{name}"], figures[f"intsets_{name}"] = sets_usage(client, keys)
            figures[f"usage_{name}"] /= count
            figures[f"sets_{name}"] = float(sets * factor)
    with server() as (url, client):  # a partition's first bucket: no predecessor to size from (64 sets)
        producer = Producer(keys, 1, WINDOW)
        producer.clock = lambda: day * WINDOW + 10
        figures["first"] = new_bucket(
            url, producer, [producer.entry("wk_live_1", message(i)) for i in range(count)], client
        )
        producer.clock = lambda: (day + 1) * WINDOW + 10
        asyncio.run(sized(url, producer))
        figures["sized"] = float(int(client.hget(keys.seen_sizes(0), day + 1) or 0))
    return figures


async def sized(url: str, producer: Producer) -> None:
    """The next bucket sized (from the first) as ingest sizes it."""
    client = redis.asyncio.Redis.from_url(url)
    await producer.markers.load(client, [0], producer.markers.bucket(producer.clock()))
    await client.aclose()


def queued(client: redis.Redis, node_bytes: int = 4096) -> float:
    """MEMORY USAGE per stream entry, with ``stream-node-max-bytes`` at ``node_bytes`` (Redis's default: 4096)."""
    client.config_set("stream-node-max-bytes", node_bytes)
    keys = Keys(f"bench-dedup-{uuid.uuid4().hex[:6]}")
    producer = Producer(keys, PARTITIONS, WINDOW)
    pipe = client.pipeline(transaction=False)
    producer.add(pipe, [producer.entry("wk_live_1", message(i)) for i in range(20_000)])
    pipe.execute()
    usage = sum(int(client.memory_usage(keys.stream(p), samples=0) or 0) for p in range(PARTITIONS))
    drop_streams(client, keys)
    client.config_set("stream-node-max-bytes", 4096)
    return usage / 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--markers", type=int, default=540_000, help="markers per bucket (one partition's share)")
    parser.add_argument("--messages", type=int, default=40_000, help="messages per CPU round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved CPU rounds (median shown)")
    args = parser.parse_args()
    load_before = load_average()
    mem = memory(args.markers)
    with server() as (url, client):
        version = client.info("server")["redis_version"]
        entry = queued(client)
        entry_16k = queued(client, 16_384)
        rounds = cpu_rounds(url, client, args.messages, args.rounds)
    median = {name: statistics.median(values) for name, values in rounds.items()}
    print(f"dedup markers and enqueue, old layout vs new: {code_version()}, redis-server {version}")
    print(f"  load average {load_before} before, {load_average()} after; {os.cpu_count()} cores")
    print(f"  bytes per dedup marker (used_memory delta; MEMORY USAGE of the sets), {args.markers:,} per bucket:")
    print(f"    old layout (a key per message):                     {mem['old']:6.1f} B/marker")
    for label, name in (("100 msgs/s", "100"), ("10,000 msgs/s", "10k")):
        print(
            f"    new, {label}, {mem[f'sets_{name}']:,.0f} sets per partition and bucket: {mem[f'steady_{name}']:6.1f}"
            f" B/marker; MEMORY USAGE {mem[f'usage_{name}']:.1f} B ({mem[f'intsets_{name}']:.0%} intsets)"
        )
    print(
        f"    new, a partition's first bucket (64 sets, no predecessor): {mem['first']:6.1f} B/marker; the next"
        f" bucket is sized to {mem['sized']:,.0f} sets from it (target {math.ceil(args.markers / TARGET_FILL):,})"
    )
    for label, key in (("100 msgs/s", "steady_100"), ("10,000 msgs/s", "steady_10k")):
        print(
            f"  per message accepted in the window at {label}: old {mem['old']:.1f} B, new {1.5 * mem[key]:.1f} B"
            f" on average (1.5 windows held), {2 * mem[key]:.1f} B at most; new/old {1.5 * mem[key] / mem['old']:.2f}"
        )
    print(
        f"  bytes per queued message (stream entry, same envelope old and new): {entry:.0f} B"
        f" (stream-node-max-bytes 4096, Redis's default); {entry_16k:.0f} B at 16384"
    )
    print(f"  Redis CPU us/msg of the enqueue, requests of 100 over {PARTITIONS} partitions (median of {args.rounds}):")
    print(f"    plain pipelined XADD (no dedup):   {median['xadd']:5.2f}   rounds {rounds['xadd']}")
    print(f"    old script (one per request):      {median['old']:5.2f}   rounds {rounds['old']}")
    print(f"    new script (one per request):      {median['new']:5.2f}   rounds {rounds['new']}")
    print(f"    new + an EXISTS per message:       {median['fallback']:5.2f}   rounds {rounds['fallback']}")
    print(f"    new/old {median['new'] / median['old']:.2f}; the old markers' fallback would add"
          f" {median['fallback'] / median['new'] - 1:.0%} to the new")  # fmt: skip
    for name in ("old", "new"):
        print(f"    commands per message, {name}: {COMMANDS.get(name, '')}")


if __name__ == "__main__":
    main()
