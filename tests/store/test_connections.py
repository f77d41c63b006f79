"""Connection modes: the settings that name the queue's Redis and Celery's broker, and replicated enqueues."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_topology import Node, Topology, redis_binary

from worker.core.errors import ConfigError, NotReplicated
from worker.core.keys import Keys
from worker.core.settings import Settings
from worker.store.connections import Target, aclose, broker, close, connect, connect_async, sentinels_of
from worker.store.producer import Producer


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_sentinels_are_host_port_pairs() -> None:
    assert sentinels_of("s1:26379, 10.0.0.2:26380,[::1]:26381") == [("s1", 26379), ("10.0.0.2", 26380), ("::1", 26381)]
    for bad in ("s1", "s1:port", ":26379", "s1:26379,"):
        with pytest.raises(ConfigError, match="CTRELAY_REDIS_SENTINELS"):
            sentinels_of(bad)


def test_the_url_gives_the_primary_its_password_and_database() -> None:
    target = Target.of(settings(REDIS_URL="redis://ops:s%40cret@ignored:6379/3", redis_sentinels="a:1,b:2"))
    assert target.sentinels == (("a", 1), ("b", 2))
    assert target.credentials() == {"password": "s@cret", "username": "ops", "db": 3}
    assert "s@cret" not in target.describe()
    assert "s%40cret" not in target.describe()
    assert Target.of(settings(REDIS_URL="redis://:pw@h:1/0")).describe() == "h:1/0"


def test_the_broker_is_the_queue_redis_unless_named() -> None:
    default = broker(settings(REDIS_URL="redis://h:6379/2", redis_prefix="p"))
    redis_options = {"global_keyprefix": "p:celery:", "ack_emulation": False}
    assert (default.url, default.transport_options) == ("redis://h:6379/2", redis_options)
    sentinel = broker(settings(redis_sentinels="a:1,b:2", redis_sentinel_master="m", redis_prefix="p"))
    assert sentinel.url == "sentinel://a:1;sentinel://b:2"
    assert sentinel.transport_options == {"master_name": "m", **redis_options}
    rabbit = broker(settings(broker_url="amqp://guest:guest@mq:5672//", redis_sentinels="a:1"))
    assert (rabbit.url, rabbit.transport_options, rabbit.is_redis) == ("amqp://guest:guest@mq:5672//", {}, False)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not on the PATH (the CI machine has it)")
    topology = Topology(tmp_path, binary)
    yield topology
    topology.stop()


def message(n: int) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{n}", "event": "E", "messageId": f"m{n}"}


async def enqueue(client_settings: Settings, producer: Producer, messages: list[dict[str, Any]]) -> list[Any]:
    client = connect_async(client_settings, timeout_s=2.0)
    try:
        return await producer.enqueue(client, [producer.entry("wk", m) for m in messages])
    finally:
        await aclose(client)


@pytest.mark.integration
def test_an_enqueue_waits_for_its_replicas(topology: Topology) -> None:
    primary = topology.data_node()
    topology.data_node(replica_of=primary)
    topology.wait_replicated(primary, 1)
    keys, where = Keys("repl"), settings(REDIS_URL=primary.url)
    one = Producer(keys, 2, 60, replicas=1, replicas_timeout_s=2.0)
    assert all(asyncio.run(enqueue(where, one, [message(n) for n in range(10)])))
    two = Producer(keys, 2, 60, replicas=2, replicas_timeout_s=0.2)
    with pytest.raises(NotReplicated) as refused:  # one replica cannot make two
        asyncio.run(enqueue(where, two, [message(n) for n in range(10, 20)]))
    assert (refused.value.acked, refused.value.wanted) == (1, 2)
    # written on the primary all the same: the client's retry is answered as duplicates, nothing is added twice
    assert asyncio.run(enqueue(where, one, [message(n) for n in range(10, 20)])) == [None] * 10
    assert sum(primary.call("XLEN", keys.stream(p)) for p in range(2)) == 20


@pytest.mark.integration
def test_clients_find_the_primary_through_the_sentinels(topology: Topology) -> None:
    primary = topology.data_node()
    replica = topology.data_node(replica_of=primary)
    topology.wait_replicated(primary, 1)
    for _ in range(3):
        topology.sentinel(primary)
    where = settings(redis_sentinels=topology.sentinel_setting, redis_sentinel_master="ctrelay-test")
    client = connect(where, timeout_s=2.0)
    try:
        client.set("k", "v")
        assert primary.call("GET", "k") == b"v"  # the write went to the primary, not the replica
        assert replica_is(replica, primary)
    finally:
        close(client)
    producer = Producer(Keys("sent"), 2, 60)
    assert all(asyncio.run(enqueue(where, producer, [message(n) for n in range(5)])))


def replica_is(replica: Node, primary: Node) -> bool:
    with replica.client() as client:
        info = client.info("replication")
    return info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port
