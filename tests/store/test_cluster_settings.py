"""Cluster mode's settings: what it refuses at start (clearly), and no node answering as a connection error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import fakeredis
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterPipeline, RedisCluster

from worker.cli.embedded import free_port
from worker.core.errors import ConfigError
from worker.core.settings import Settings
from worker.store.connections import Target, broker, connect, connect_async, is_cluster


def cluster(**values: object) -> Settings:
    return Settings(redis_cluster=True, **values)  # type: ignore[arg-type]


def test_cluster_mode_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ConfigError, match="CTRELAY_BROKER_URL"):
        broker(cluster())
    assert broker(cluster(broker_url="amqp://guest:guest@rabbit:5672//")).url.startswith("amqp://")
    named = broker(cluster(broker_url="redis://plain:6379/0", redis_prefix="relay"))
    assert named.transport_options["global_keyprefix"] == "relay:celery:"  # a plain Redis broker, under the prefix


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"redis_sentinels": "s:26379"}, "choose one mode"),
        ({"min_replicas": 1}, "CTRELAY_MIN_REPLICAS"),
        ({"redis_prefix": "a{b}"}, "brace"),
    ],
)
def test_combinations_no_mode_supports_are_refused(values: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Target.of(cluster(**values))


def test_no_node_answering_is_a_connection_error() -> None:
    where = cluster(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert Target.of(where).describe().startswith("Redis Cluster of redis://127.0.0.1:")
    assert "s3cret" not in Target.of(cluster(REDIS_URL="redis://:s3cret@node-1:6379/0")).describe()
    with pytest.raises(redis.ConnectionError):
        connect(where, timeout_s=0.5)

    async def first_command() -> None:
        client = connect_async(where, timeout_s=0.5)
        assert is_cluster(client)
        await client.get("k")

    with pytest.raises(redis.ConnectionError):
        asyncio.run(first_command())


def test_the_worker_refuses_to_start_without_a_broker(tmp_path: Path) -> None:
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk"\naccount_id = "A"\npasscode = "p"\n')
    env = dict(os.environ, CTRELAY_REDIS_CLUSTER="true", CTRELAY_DESTINATIONS=str(destinations))
    env.pop("CTRELAY_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", "from worker.cli import app; app(prog_name='ctrelay')", "worker"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-1000:]
    assert "error: CTRELAY_REDIS_CLUSTER=true needs CTRELAY_BROKER_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_is_cluster_answers_per_client_class() -> None:
    """The answer is kept per class (redis-py's cluster classes' isinstance is slow): each class still gets its own."""
    plain = redis.Redis()
    for client in (plain, plain.pipeline(), AsyncRedis(), fakeredis.FakeRedis(), fakeredis.FakeRedis()):
        assert not is_cluster(client)
        assert not is_cluster(client)  # (the kept answer too)

    class Cluster(RedisCluster):  # a subclass, never connected
        def __init__(self) -> None:
            pass

    class AsyncCluster(AsyncRedisCluster):
        def __init__(self) -> None:
            pass

    class Pipeline(ClusterPipeline):
        def __init__(self) -> None:
            pass

    for client in (Cluster(), AsyncCluster(), Pipeline(), Cluster()):
        assert is_cluster(client)
        assert is_cluster(client)
