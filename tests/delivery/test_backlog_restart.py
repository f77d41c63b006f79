"""The one backlog measure after a Redis restart: with every stream drained it reads 0 everywhere.

A ``redis-server`` of the test's own (AOF) is SIGKILLed and started again between two rounds of 5,000
messages, each drained by the real drain path (fake CleverTap). Then the consumer group is left as the
operators saw it after restarts (``entries-read`` behind: a lag of 10,000 with every stream empty) to show
that no reader trusts it: ``ctrelay status``, the worker's gauges, ingest's cap figure and the ticker.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis
import redis.asyncio
from chaos_cluster import RedisServer
from delivery_fakes import FakeCleverTap, build, enqueue, track
from prometheus_client import CollectorRegistry, generate_latest

from worker.core.destinations import Destination
from worker.core.keys import GROUP, Keys
from worker.delivery.drain import partitions_with_work
from worker.delivery.metrics import ClusterCollector
from worker.ops.status import read_status
from worker.store.producer import Producer
from worker.store.streams import ensure_groups

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not any(Path(p, "redis-server").exists() for p in os.get_exec_path()), reason="no redis-server"),
]
PARTITIONS = 4
DEST = Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://ct.test")


def drain_all(client: redis.Redis, keys: Keys, fake: FakeCleverTap) -> None:
    drainer = build(client, keys, {"wk": DEST}, fake)
    try:
        for _ in range(100):
            busy = partitions_with_work(client, keys, PARTITIONS, reclaim_idle_s=60)
            if not busy:
                return
            for partition in busy:
                drainer.drain(partition)
        raise AssertionError("the streams did not drain")
    finally:
        drainer.close()  # as a warm shutdown does: its keeper no longer renews a liveness key on this Redis


async def ingest_backlog(url: str, producer: Producer) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return await producer.backlog(client)
    finally:
        await client.aclose()


def test_backlog_reads_zero_everywhere_after_a_restart_and_10000_messages(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "everysec")
    server.start()
    keys, fake = Keys("restart"), FakeCleverTap()
    try:
        client = redis.Redis.from_url(server.url)
        ensure_groups(client, keys, PARTITIONS)
        for round_ in range(2):
            messages = [track(f"user-{n % 97}", n) for n in range(5_000)]
            enqueue(client, keys, "wk", messages, partitions=PARTITIONS)
            drain_all(client, keys, fake)
            if round_ == 0:
                client.close()
                server.kill()  # SIGKILL, then the same files again
                server.start()
                client = redis.Redis.from_url(server.url)
        assert len(fake.received) == 10_000
        for partition in range(PARTITIONS):  # the group as seen after restarts: entries-read stuck behind
            client.xgroup_setid(keys.stream(partition), GROUP, "$", entries_read=0)
        lags = [group["lag"] for p in range(PARTITIONS) for group in client.xinfo_groups(keys.stream(p))]
        assert sum(lags) == 10_000  # what the consumer group's lag now claims

        status = read_status(client, keys, PARTITIONS, {"wk": DEST}, default_cap=15)
        assert (status.backlog, status.lag, status.pending, status.retries) == (0, 0, 0, 0)

        registry = CollectorRegistry()
        registry.register(
            ClusterCollector(
                client, keys, partitions=PARTITIONS, accounts=["ACC"], destinations={"wk": "ACC"}, max_cap=15
            )
        )
        text = generate_latest(registry).decode()
        assert "ctrelay_backlog 0.0" in text
        assert all(f'ctrelay_stream_lag{{partition="{p}"}} 0.0' in text for p in range(PARTITIONS))

        producer = Producer(keys, PARTITIONS, dedup_window=600)
        assert asyncio.run(ingest_backlog(server.url, producer)) == 0  # ingest's cap compares this
        assert producer.backlog_sync(client) == 0
        assert partitions_with_work(client, keys, PARTITIONS, reclaim_idle_s=60) == []  # the ticker queues nothing

        enqueue(client, keys, "wk", [track("late", n) for n in range(5)], partitions=PARTITIONS)  # a few arrive
        assert asyncio.run(ingest_backlog(server.url, producer)) == 5  # not 10,005: no false backlog_full
        assert read_status(client, keys, PARTITIONS, {"wk": DEST}, default_cap=15).backlog == 5
        assert len(partitions_with_work(client, keys, PARTITIONS, reclaim_idle_s=60)) == 1
        client.close()
    finally:
        server.stop()
