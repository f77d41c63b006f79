"""Running scripts by EVALSHA (worker.store.evalsha): the held connection of a plain client answers as redis-py's
pipeline does (values, error replies as values, NOSCRIPT loaded again, a MULTI of several), and survives its
connection being killed (the connection's retry); other clients keep the pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

from worker.core.settings import Settings
from worker.store import evalsha
from worker.store.connections import connect_async

OK = "return {1, false, 'x', KEYS[1], ARGV[1]}"
FAILS = "return redis.error_reply('BOOM nope')"


def _shape(answers: list[Any]) -> list[Any]:
    return [(type(a).__name__, str(a)) if isinstance(a, BaseException) else a for a in answers]


@pytest.mark.integration
def test_the_held_connection_answers_as_the_pipeline(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unloaded = f"return '{prefix}'"  # a source Redis has never seen: NOSCRIPT, then loaded

    async def run(held: bool) -> list[list[Any]]:
        client = connect_async(Settings(redis_url=redis_url), timeout_s=2)
        if not held:
            monkeypatch.setattr(evalsha, "_held", lambda _: None)
        try:
            for source in (OK, FAILS):
                await client.script_load(source)
            found = []
            for scripts in (
                [(OK, [f"{prefix}:k"], ["a"])],
                [(OK, [f"{prefix}:k"], ["a"]), (FAILS, [f"{prefix}:k"], []), (unloaded + " --" + str(held), [], [])],
                [(unloaded + " --" + str(held), [], [])],
            ):
                found.append(_shape(await evalsha.run_scripts(client, scripts)))
            assert (client in evalsha._HELD) is held
            return found
        finally:
            monkeypatch.undo()
            await client.aclose()

    with_held, with_pipeline = asyncio.run(run(True)), asyncio.run(run(False))
    assert with_held[:2] == with_pipeline[:2]
    assert with_held[0] == [[1, None, b"x", f"{prefix}:k".encode(), b"a"]]
    assert with_held[1][1] == ("ResponseError", "BOOM nope")
    assert with_held[1][2][0] == "NoScriptError"
    assert with_held[2] == [prefix.encode()]  # loaded by the first call


@pytest.mark.integration
def test_the_held_connection_survives_its_connection_killed(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        client = connect_async(Settings(redis_url=redis_url), timeout_s=2)
        try:
            scripts = [(OK, [f"{prefix}:k"], ["a"])]
            await evalsha.run_scripts(client, scripts)
            held = evalsha._HELD[client].connection
            assert held is not None
            admin = redis.Redis.from_url(redis_url)
            ids = [c["id"] for c in admin.client_list() if c.get("cmd") in ("evalsha", "eval")]
            assert ids
            for number in ids:
                admin.client_kill_filter(_id=number)
            admin.close()
            assert (await evalsha.run_scripts(client, scripts))[0][0] == 1  # retried on a new connection
        finally:
            await client.aclose()

    asyncio.run(go())


def test_only_a_plain_client_of_a_url_pool_gets_a_held_connection() -> None:
    plain = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0")

    class Pool(redis.asyncio.ConnectionPool):
        pass

    other = redis.asyncio.Redis(connection_pool=Pool())
    assert evalsha._held(plain) is not None
    assert evalsha._held(other) is None


def test_a_call_that_gets_no_answer_in_the_socket_timeout_fails_as_a_redis_timeout() -> None:
    """A Redis that answers the connection's handshake, never a script: the held connection's call (its send and its
    replies)
    has the socket timeout as one limit, is retried once on a new connection, then fails with redis-py's
    ``TimeoutError`` (a 503 for ingest), and the connection is dropped each time."""

    async def go() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            while data := await reader.read(65536):
                if b"EVALSHA" in data:
                    continue  # never answered
                commands = data.count(b"\r\n*") + data.startswith(b"*")
                writer.write(b"+OK\r\n" * commands)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = connect_async(Settings(redis_url=f"redis://127.0.0.1:{port}/0"), timeout_s=0.2)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(redis.TimeoutError, match="scripts' call"):
                await evalsha.run_scripts(client, [(OK, ["k"], ["a"])])
            assert asyncio.get_running_loop().time() - started < 5
            assert len(accepted) == 2  # the retry's connection is a new one
            held = evalsha._HELD[client].connection
            assert held is not None
            assert held.socket_timeout is None
            assert not held.is_connected
        finally:
            await client.aclose()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(go())
