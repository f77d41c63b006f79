"""Running the hot path's Lua scripts by EVALSHA (never the source), several in one round trip.

Scripts are named by the SHA-1 of their source, computed here; Redis loads a script once (``SCRIPT LOAD``) when it
answers ``NOSCRIPT`` (after a restart or a failover), and the caller runs that script again.

On one Redis named by a URL (a plain ``redis.asyncio.Redis`` on its own ``ConnectionPool``, no ``WAIT``), the
commands go on a connection of the client's pool held for the scripts (:class:`_Held`), one call at a time, packed,
sent and read through the connection itself: redis-py's pipeline, the pool's checkout and check-in and its health
check cost ingest more CPU than the rest of a single call's write. The answers are read as the pipeline reads them
(an error reply is that command's answer), a connection or timeout error is retried once on a new connection
(the connection's own retry policy, as the pipeline's), and the pool closes the connection with the client. A
Redis Cluster, Sentinel's primary and ``WAIT`` use redis-py's pipeline.

The held connection's commands are packed by hiredis (:func:`_pack`): redis-py's asyncio connection packs in Python,
argument by argument (an enqueue of 100 messages has ~300 arguments: ~5x the CPU of hiredis's C). The same bytes
(tested side by side); what hiredis refuses (a type it does not take), a command name redis-py would split
(``"CONFIG GET"``) and a connection whose encoding is not UTF-8 strict go through redis-py's packer, as before.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import weakref
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.core.errors import NotReplicated
from worker.store.connections import is_cluster, reset_is_connection_error


@functools.lru_cache(maxsize=64)
def sha(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


class _Held:
    """A connection of a client's pool kept for the scripts: one call at a time, its replies read in order.

    A call (its send and the reading of its replies) has the connection's socket timeout as one time limit: redis-py
    would bound the send by a task of its own (``wait_for``) and each reply by a timer, per call. Past the limit the
    connection is dropped and the call fails with redis-py's ``TimeoutError``, retried once as redis-py's own."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.connection: AbstractConnection | None = None
        self.limit_s: float | None = None
        self.lock = asyncio.Lock()

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply (an error reply as its exception), as a pipeline's ``execute(raise_on_error=False)``
        answers; a connection or timeout error (retried once) raises."""
        async with self.lock:
            connection = self.connection
            if connection is None:
                connection = self.connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]  # held
                self.limit_s, connection.socket_timeout = connection.socket_timeout, None  # (the call's limit, below)
            packed = _pack(connection, commands)
            limit = self.limit_s

            async def attempt() -> list[Any]:
                replies: list[Any] = []
                try:
                    async with asyncio.timeout(limit):
                        await connection.send_packed_command(packed, check_health=False)
                        for _ in commands:
                            try:
                                replies.append(await connection.read_response())
                            except ResponseError as exc:
                                replies.append(exc)
                except TimeoutError:
                    await connection.disconnect(nowait=True)
                    raise RedisTimeoutError(f"Timeout of the scripts' call after {limit} s") from None
                return replies

            async def failed(error: BaseException) -> None:
                await connection.disconnect()

            try:
                result: list[Any] = await connection.retry.call_with_retry(attempt, failed)
            except BaseException:  # (cancelled too: replies may be left unread on it)
                await connection.disconnect(nowait=True)
                raise
            return result


def _pack(connection: AbstractConnection, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``connection.pack_commands(commands)``'s bytes (one piece per command), packed by hiredis when it can."""
    encoder = connection.encoder
    plain = all(command[0].__class__ is str and " " not in command[0] for command in commands)  # (no "CONFIG GET")
    if plain and encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
        try:
            return [hiredis.pack_command(command) for command in commands]
        except TypeError:  # (a bool, None, a bytearray...: redis-py's packer says what it says of them)
            pass
    return connection.pack_commands(commands)


_HELD: weakref.WeakKeyDictionary[AsyncRedis, _Held] = weakref.WeakKeyDictionary()


def _held(client: AsyncRedis) -> _Held | None:
    """The held connection of a plain client on a URL's pool; None for any other client (cluster, Sentinel)."""
    held = _HELD.get(client)
    if held is None:
        if type(client) is not AsyncRedis or type(client.connection_pool) is not ConnectionPool:
            return None
        held = _HELD[client] = _Held(client.connection_pool)
    return held


async def run_commands(
    client: AsyncRedis, commands: list[tuple[Any, ...]], replicas: int = 0, timeout_ms: int = 1000
) -> list[Any]:
    """Send ``commands`` in one round trip; each one's reply (an error reply as its exception), then, with
    ``replicas``, ``WAIT``'s. On the held connection of a plain client (:func:`_held`), else a pipeline."""
    cluster = is_cluster(client)
    held = None if replicas or cluster else _held(client)
    if held is not None:
        return await held.execute(commands)
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        if replicas:
            pipe.wait(replicas, timeout_ms)
        executed = pipe.execute(raise_on_error=False)
        return list(await (reset_is_connection_error(executed) if cluster else executed))


async def run_scripts(
    client: AsyncRedis, scripts: list[tuple[str, list[str], list[Any]]], replicas: int = 0, timeout_ms: int = 1000
) -> list[Any]:
    """Run ``scripts`` (source, KEYS, ARGV) in one round trip; their answers (errors as values).

    On one Redis (not a cluster) several go in one MULTI, so that a full Redis (``maxmemory``) refuses them as a
    whole: a script is refused or runs as a whole, and in a MULTI all are judged by Redis's memory before the
    EXEC. On a cluster the pipeline sends each to its node. With ``replicas``, a ``WAIT`` follows on the same
    connection and :class:`~worker.core.errors.NotReplicated` is raised when fewer confirmed in time. A script
    Redis lost is loaded again and answered ``NoScriptError``: the caller runs it again."""
    multi = len(scripts) > 1 and not is_cluster(client)
    # EVALSHA as a command: redis-py's cluster pipeline refuses its evalsha() method, not the command
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", sha(source), len(keys), *keys, *args) for source, keys, args in scripts
    ]
    raw = await run_commands(client, [("MULTI",), *commands, ("EXEC",)] if multi else commands, replicas, timeout_ms)
    answers = raw[len(scripts) + 1] if multi else raw[: len(scripts)]
    if isinstance(answers, BaseException):  # EXECABORT: nothing of the MULTI ran
        raise answers
    lost = {
        source for (source, _, _), answer in zip(scripts, answers, strict=True) if isinstance(answer, NoScriptError)
    }
    for source in lost:
        await client.script_load(source)
    if replicas and not any(isinstance(answer, BaseException) for answer in answers):
        acked = raw[-1]
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < replicas:
            raise NotReplicated(int(acked), replicas)
    return list(answers)
