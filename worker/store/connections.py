"""Connections: every Redis client of the relay is made here, from the settings, in one of three modes.

- **Standalone** (default): ``REDIS_URL`` names the Redis.
- **Cluster** (``CTRELAY_REDIS_CLUSTER=true``): ``REDIS_URL`` names any node of a Redis Cluster (its password too);
  redis-py's ``RedisCluster`` learns the others and follows the slots' moves and failovers. Celery's broker must then
  be named by ``CTRELAY_BROKER_URL`` (kombu has no Redis Cluster transport), and ``CTRELAY_MIN_REPLICAS`` is refused
  (a ``WAIT`` answers for one node's connection only). The keys' hash tags keep every script and transaction within
  one slot (:mod:`worker.core.keys`). The clients are typed as ``redis.Redis``: the commands the relay sends are
  the same on both.
- **Sentinel**: ``CTRELAY_REDIS_SENTINELS=host:port,...`` names Redis Sentinels and ``CTRELAY_REDIS_SENTINEL_MASTER``
  (``mymaster``) the primary they watch; every client asks the Sentinels where the primary is, and asks again
  after a failover. ``REDIS_URL`` still gives the password and the database number of the primary.

Celery's broker is its own URL (``CTRELAY_BROKER_URL``: ``redis://``, ``sentinel://`` or ``amqp://`` for RabbitMQ);
by default it is the queue's Redis (in Sentinel mode, kombu's ``sentinel://`` transport over the same Sentinels).
The Redis broker's keys live under ``<prefix>:celery``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel

from worker.core.errors import ConfigError
from worker.core.keys import Keys
from worker.core.settings import Settings


def sentinels_of(text: str) -> list[tuple[str, int]]:
    """``"h1:26379,h2:26379"`` → ``[("h1", 26379), ("h2", 26379)]``; ConfigError naming what is wrong."""
    found: list[tuple[str, int]] = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"CTRELAY_REDIS_SENTINELS: {item.strip()!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return found


@dataclass(frozen=True)
class Target:
    """Where the queue's Redis is: a URL, or a primary found through Sentinels (with the URL's password and db)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    cluster: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Target:
        """The target of ``settings``; ConfigError for a combination no mode supports."""
        sentinels = tuple(sentinels_of(settings.redis_sentinels)) if settings.redis_sentinels else ()
        if settings.redis_cluster:
            if sentinels:
                raise ConfigError("CTRELAY_REDIS_CLUSTER and CTRELAY_REDIS_SENTINELS: choose one mode")
            if settings.min_replicas:
                raise ConfigError(
                    "CTRELAY_MIN_REPLICAS is not supported with CTRELAY_REDIS_CLUSTER (a WAIT covers one node only): "
                    "unset it, or use Sentinel mode"
                )
            if "{" in settings.redis_prefix or "}" in settings.redis_prefix:
                raise ConfigError(
                    f"CTRELAY_REDIS_PREFIX {settings.redis_prefix!r} has a brace: in cluster mode it would put every "
                    "key in one slot (the keys' own hash tags come after the prefix)"
                )
        return cls(settings.redis_url, sentinels, settings.redis_sentinel_master, settings.redis_cluster)

    def credentials(self) -> dict[str, Any]:
        """The password, user and database of ``url`` (for the primary behind the Sentinels)."""
        parts = urlsplit(self.url)
        found: dict[str, Any] = {}
        if parts.password:
            found["password"] = unquote(parts.password)
        if parts.username:
            found["username"] = unquote(parts.username)
        path = parts.path.strip("/")
        if path.isdigit():
            found["db"] = int(path)
        return found

    def describe(self) -> str:
        """Where the Redis is, for messages (no password)."""
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"primary {self.master!r} of Sentinels {where}"
        if self.cluster:
            return f"Redis Cluster of {self.url.rpartition('@')[2]}"
        return self.url.rpartition("@")[2]


def connect(
    settings: Settings,
    *,
    timeout_s: float,
    connect_timeout_s: float | None = None,
    health_check_interval_s: int = 0,
    retry_once: bool = False,
) -> redis.Redis:
    """A synchronous client on the queue's Redis (standalone, the Sentinels' primary, or a cluster); ``retry_once``:
    one reconnect attempt and no backoff (fail fast, as ingest does), instead of redis-py's default retries."""
    target = Target.of(settings)
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s if connect_timeout_s is not None else timeout_s,
        "health_check_interval": health_check_interval_s,
    }
    if retry_once:
        options["retry"] = SyncRetry(NoBackoff(), 1)
    if target.sentinels:
        timeout = options["socket_connect_timeout"]
        sentinel = Sentinel(list(target.sentinels), socket_timeout=timeout)  # type: ignore[no-untyped-call]
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.master, **options, **target.credentials()
        )
        return client
    if target.cluster:
        try:  # the synchronous cluster client asks a node for the slots at once
            return cast("redis.Redis", RedisCluster.from_url(target.url, **options))
        except RedisClusterException as exc:  # no node answered: a connection error like any other mode's
            raise redis.ConnectionError(str(exc)) from exc
    return redis.Redis.from_url(target.url, **options)


class _HiredisPacking(redis.asyncio.Connection):
    """redis.asyncio packs commands in Python (~1 ms for one EVALSHA of a 100-message batch); hiredis
    packs in C, as the synchronous client already does (same splitting of ``"SCRIPT LOAD"``-style names)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


class _AsyncCluster(AsyncRedisCluster):
    """The asyncio cluster client learns the slots on its first command; no node answering is then a connection
    error, as in the other modes (redis-py raises its own RedisClusterException, which callers would not expect)."""

    async def initialize(self, *args: Any, **kwargs: Any) -> _AsyncCluster:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise redis.ConnectionError(str(exc)) from exc
        return self


def connect_async(settings: Settings, *, timeout_s: float) -> redis.asyncio.Redis:
    """An asyncio client that fails fast (short connect/read timeouts, one reconnect attempt): ingest's."""
    target = Target.of(settings)
    retry = AsyncRetry(NoBackoff(), 1)
    if target.sentinels:
        sentinel = AsyncSentinel(list(target.sentinels), socket_timeout=timeout_s)  # type: ignore[no-untyped-call]
        client: redis.asyncio.Redis = sentinel.master_for(
            target.master,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
            **target.credentials(),
        )
        return client
    if target.cluster:
        cluster = _AsyncCluster.from_url(
            target.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry
        )
        return cast("redis.asyncio.Redis", cluster)
    pool = redis.asyncio.ConnectionPool.from_url(
        target.url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=retry,
        connection_class=_HiredisPacking if target.url.startswith("redis://") else redis.asyncio.Connection,
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


@dataclass(frozen=True)
class Broker:
    """Celery's broker: its URL and kombu transport options."""

    url: str
    transport_options: dict[str, Any]

    @property
    def is_redis(self) -> bool:
        return self.url.split("://", 1)[0] in ("redis", "rediss", "sentinel", "unix")


def broker(settings: Settings) -> Broker:
    """Celery's broker for ``settings``: ``CTRELAY_BROKER_URL``, else the queue's Redis (or its Sentinels); in
    cluster mode ``CTRELAY_BROKER_URL`` must be set (ConfigError)."""
    queue = Keys(settings.redis_prefix).celery()
    target = Target.of(settings)
    if target.cluster and not settings.broker_url:
        raise ConfigError(
            "CTRELAY_REDIS_CLUSTER=true needs CTRELAY_BROKER_URL: Celery cannot use a Redis Cluster as its broker "
            "(kombu has no cluster transport); name RabbitMQ (amqp://...) or a plain Redis (redis://...)"
        )
    if settings.broker_url:
        url = settings.broker_url
        options: dict[str, Any] = {}
        if url.startswith("sentinel://"):
            options["master_name"] = settings.redis_sentinel_master
    elif target.sentinels:
        url = ";".join(f"sentinel://{host}:{port}" for host, port in target.sentinels)
        options = {"master_name": target.master}  # a password-protected primary: set CTRELAY_BROKER_URL
    else:
        url, options = target.url, {}
    result = Broker(url, options)
    if result.is_redis:
        options["global_keyprefix"] = f"{queue}:"  # the broker's keys beside the queue's, under the prefix
        # no ack emulation: its bookkeeping of unacked tasks (a MULTI on the broker) is what fails on a Redis restart
        # and under maxmemory; a drain lost with its worker costs nothing (the ticker queues the partition again)
        options["ack_emulation"] = False
    return result


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (or a pipeline of it) talks to a Redis Cluster.

    Answered once per client class (``type(client)``, not ``isinstance``: an object posing as another class, a mock
    with a ``spec``, is taken for what it is): redis-py's cluster classes have typing's Protocol metaclass, whose
    ``isinstance`` costs ~2-4 µs, and ingest asks this several times per write."""
    kind = type(client)
    known = _CLUSTER_KINDS.get(kind)
    if known is None:
        known = issubclass(kind, RedisCluster | AsyncRedisCluster) or kind.__name__ == "ClusterPipeline"
        _CLUSTER_KINDS[kind] = known
    return known


_CLUSTER_KINDS: dict[type, bool] = {}
""":func:`is_cluster`'s answer per class (a handful of redis-py's classes, and the tests' fakes)."""


async def reset_is_connection_error(call: Awaitable[Any]) -> Any:
    """``await call``; an AttributeError or RuntimeError raised by redis-py's asyncio cluster client is a
    ConnectionError: when a node fails, that client closes the node's connections under the feet of commands in
    flight on them ("'NoneType' object has no attribute 'writelines'", "the handler is closed")."""
    try:
        return await call
    except (AttributeError, RuntimeError) as exc:
        raise redis.ConnectionError(f"Redis Cluster connection reset: {exc}") from exc


def close(client: redis.Redis) -> None:
    """Close ``client``, and the Sentinel connections it asked (Sentinel mode)."""
    client.close()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


async def aclose(client: redis.asyncio.Redis) -> None:
    """Close an asyncio ``client``, and the Sentinel connections it asked (Sentinel mode)."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
