"""Connections: every Redis client of the relay is made here, from the settings, in one of two modes.

- **Standalone** (default): ``REDIS_URL`` names the Redis.
- **Sentinel**: ``CTRELAY_REDIS_SENTINELS=host:port,...`` names Redis Sentinels and ``CTRELAY_REDIS_SENTINEL_MASTER``
  (``mymaster``) the primary they watch; every client asks the Sentinels where the primary is, and asks again
  after a failover. ``REDIS_URL`` still gives the password and the database number of the primary.

Celery's broker is its own URL (``CTRELAY_BROKER_URL``: ``redis://``, ``sentinel://`` or ``amqp://`` for RabbitMQ);
by default it is the queue's Redis (in Sentinel mode, kombu's ``sentinel://`` transport over the same Sentinels).
The Redis broker's keys live under ``<prefix>:celery``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
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

    @classmethod
    def of(cls, settings: Settings) -> Target:
        sentinels = tuple(sentinels_of(settings.redis_sentinels)) if settings.redis_sentinels else ()
        return cls(settings.redis_url, sentinels, settings.redis_sentinel_master)

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
        return self.url.rpartition("@")[2]


def connect(
    settings: Settings,
    *,
    timeout_s: float,
    connect_timeout_s: float | None = None,
    health_check_interval_s: int = 0,
    retry_once: bool = False,
) -> redis.Redis:
    """A synchronous client on the queue's Redis (standalone or the Sentinels' primary); ``retry_once``: one
    reconnect attempt and no backoff (fail fast, as ingest does), instead of redis-py's default retries."""
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
    return redis.Redis.from_url(target.url, **options)


class _HiredisPacking(redis.asyncio.Connection):
    """redis.asyncio packs commands in Python (~1 ms for one EVALSHA of a 100-message batch); hiredis
    packs in C, as the synchronous client already does (same splitting of ``"SCRIPT LOAD"``-style names)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " in name:
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


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
    """Celery's broker for ``settings``: ``CTRELAY_BROKER_URL``, else the queue's Redis (or its Sentinels)."""
    queue = Keys(settings.redis_prefix).celery()
    target = Target.of(settings)
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


def close(client: redis.Redis) -> None:
    """Close ``client``, and the Sentinel connections it asked (Sentinel mode)."""
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


async def aclose(client: redis.asyncio.Redis) -> None:
    """Close an asyncio ``client``, and the Sentinel connections it asked (Sentinel mode)."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
