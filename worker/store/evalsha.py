"""Running the hot path's Lua scripts by EVALSHA (never the source), several in one round trip.

Scripts are named by the SHA-1 of their source, computed here; Redis loads a script once (``SCRIPT LOAD``) when it
answers ``NOSCRIPT`` (after a restart or a failover), and the caller runs that script again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError

from worker.core.errors import NotReplicated
from worker.store.connections import is_cluster, reset_is_connection_error


def sha(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


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
    async with client.pipeline(transaction=False) as pipe:
        if multi:
            pipe.execute_command("MULTI")
        for source, keys, args in scripts:
            # execute_command: redis-py's cluster pipeline refuses its evalsha() method, not the command
            pipe.execute_command("EVALSHA", sha(source), len(keys), *keys, *args)
        if multi:
            pipe.execute_command("EXEC")
        if replicas:
            pipe.wait(replicas, timeout_ms)
        executed = pipe.execute(raise_on_error=False)
        raw = await (reset_is_connection_error(executed) if is_cluster(client) else executed)
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
