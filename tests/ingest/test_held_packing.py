"""The held scripts' connection packs its commands with hiredis: the bytes redis-py's own packer writes.

Ingest's writes go through :mod:`worker.store.evalsha`'s held connection; its ``_pack`` replaces redis-py's asyncio
packer (Python, per argument) by hiredis's. Compared here: generated commands of every argument type a command
takes (the bytes on the wire, joined), and what hiredis refuses (redis-py's answer: its packing or its DataError).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from worker.store.evalsha import _pack

arguments = (
    st.text(max_size=20)
    | st.binary(max_size=20)
    | st.integers()
    | st.floats()
    | st.binary(min_size=6000, max_size=7000)  # past redis-py's buffer cutoff: its own chunks
    | st.text(min_size=6000, max_size=6100)
)
commands = st.lists(
    st.tuples(
        st.sampled_from(["EVALSHA", "PING", "MULTI", "EXEC", "XADD", "CONFIG GET", b"EVALSHA", b"SCRIPT LOAD"])
    ).flatmap(lambda name: st.lists(arguments, max_size=8).map(lambda rest: (*name, *rest))),
    min_size=1,
    max_size=4,
)


def redis_py(connection: Connection, given: list[tuple[Any, ...]]) -> bytes:
    return b"".join(connection.pack_commands(given))


@settings(max_examples=400, deadline=None, database=None)
@given(given=commands)
def test_the_same_bytes_as_redis_py(given: list[tuple[Any, ...]]) -> None:
    connection = Connection()
    assert b"".join(_pack(connection, given)) == redis_py(connection, given)


def test_an_enqueue_shaped_call() -> None:
    keys = [f"ctrelay:{{p{i % 16}}}:seen:2945678:{i % 64}" for i in range(100)]
    args = [2945678, 2945677, 1200, "wk", 600, *(5, 0, 6, 0) * 16]
    args += [part for i in range(100) for part in (str(-(2**62) + i).encode(), b'{"type":"track","e":"\xc3\xa9"}')]
    call = [("EVALSHA", "a" * 40, len(keys), *keys, *args)]
    connection = Connection()
    packed = _pack(connection, call)
    assert len(packed) == 1  # one piece, hiredis's
    assert packed[0] == redis_py(connection, call)


@pytest.mark.parametrize("odd", [bytearray(b"x"), memoryview(b"xy")])
def test_what_hiredis_refuses_is_packed_by_redis_py(odd: Any) -> None:
    connection = Connection()
    call = [("SET", "k", odd)]
    assert b"".join(_pack(connection, call)) == redis_py(connection, call)


@pytest.mark.parametrize("odd", [True, None, object()])
def test_what_redis_py_refuses_is_refused_alike(odd: Any) -> None:
    connection = Connection()
    with pytest.raises(DataError):
        connection.pack_commands([("SET", "k", odd)])
    with pytest.raises(DataError):
        _pack(connection, [("SET", "k", odd)])


def test_another_encoding_is_redis_pys() -> None:
    connection = Connection(encoding="latin-1")
    call = [("SET", "k", "é")]
    assert _pack(connection, call) == connection.pack_commands(call)
    assert b"".join(_pack(connection, call)).endswith(b"$1\r\n\xe9\r\n")
