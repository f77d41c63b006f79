"""The Tracking API's own dispatch (ingest.tracking.dispatch) and what it relies on, against what it replaced.

- the whole front (CORS, the dispatch, FastAPI) answers every request, generated, exactly as CORS in front of
  FastAPI's own routes of the same paths does: status, headers and body, hostile input included (bad encodings,
  chunked bodies, a client gone before its body, wrong methods, unknown paths);
- the header lookup and the body reader equal Starlette's ``Headers.get`` and ``Request.stream``;
- timestamps formatted from orjson's text equal ``isoformat``;
- the gathered writes (ingest.tracking.writes): each request its own ids, one failure fails the whole call,
  dedup across the requests of one call.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from ingest import body
from ingest.app import create_app
from ingest.cors import CORS, parse_origins
from ingest.tracking.auth import sign
from ingest.tracking.enrich import format_time
from ingest.tracking.routes import _headers
from ingest.tracking.writes import MOST, Writes
from worker.core.keys import Keys
from worker.core.settings import Settings, load
from worker.store.producer import Entry, Producer

SHOP = "https://shop.example.com"
SECRET = "s3cret"
PATHS = [
    *(
        f"/v1/{call}"
        for call in ("identify", "track", "page", "screen", "group", "alias", "i", "t", "p", "s", "g", "a")
    ),
    "/v1/batch",
    "/v1/import",
    "/v1/b",
    "/v1/webhook",
]
OTHER_PATHS = ["/v1/projects/wk_web/settings", "/v1/nope", "/healthz", "/v1/track//", "/v1/Track", "/v1", "/v2/track"]


def basic(key: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{key}:".encode())


MESSAGE = {"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}
messages = st.fixed_dictionaries(
    {"userId": st.sampled_from(["u1", "u2", 7, None, ""]), "event": st.sampled_from(["Signed Up", "", None, 3])},
    optional={
        "type": st.sampled_from(["track", "identify", "alias", "nope", None]),
        "messageId": st.sampled_from(["m-1", "m-2", "x" * 101, 5]),
        "anonymousId": st.sampled_from(["a1", None]),
        "context": st.sampled_from([{"ip": "203.0.113.9"}, [], {"ctrelay": {"deletion": "admin"}}, None]),
        "writeKey": st.sampled_from(["wk_web", "wk_other", 5]),
        "timestamp": st.sampled_from(["2026-12-01T10:00:00Z", "junk", "0001-01-01T00:00:00Z"]),
        "sentAt": st.sampled_from(["2026-12-01T10:00:01Z", 3]),
        "properties": st.sampled_from([{"a": [1, {"b": None}]}, "x"]),
    },
)
json_bodies = st.one_of(
    messages.map(orjson.dumps),
    st.lists(messages, max_size=4).map(lambda items: orjson.dumps({"batch": items, "sentAt": "2026-12-01T10:00:01Z"})),
    st.lists(messages, max_size=3).map(orjson.dumps),
    st.lists(messages, max_size=3).map(lambda items: orjson.dumps({"batch": items, "context": [1]})),
    st.integers(1, 80).map(
        lambda n: b'{"type":"track","userId":"u","event":"e","properties":' + b"[" * n + b"]" * n + b"}"
    ),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"batch": 3}', b"\xff\xfe", b"{", b'"x"', b"1e999"]),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes], bool]:
    """One request: its ASGI scope, its body in chunks, and whether the client goes away before the end."""
    method = draw(st.sampled_from(["POST"] * 6 + ["PUT", "PATCH", "GET", "OPTIONS", "DELETE", "HEAD"]))
    path = draw(st.sampled_from(PATHS + [p + "/" for p in PATHS] + OTHER_PATHS))
    content = draw(json_bodies)
    pool = [
        (b"authorization", basic("wk_web")),
        (b"authorization", basic("wk_hook")),
        (b"authorization", basic("wk_unknown")),
        (b"authorization", b"Basic !!!"),
        (b"authorization", b"Bearer x"),
        (b"content-type", b"text/plain"),
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"content-encoding", b"deflate"),
        (b"content-encoding", b"br"),
        (b"content-encoding", b"identity"),
        (b"origin", SHOP.encode()),
        (b"origin", b"https://evil.example"),
        (b"x-signature", sign(SECRET, content).encode()),
        (b"x-signature", b"00"),
        (b"content-length", b"99999999"),
        (b"access-control-request-method", b"POST"),
    ]
    headers = draw(st.lists(st.sampled_from(pool), max_size=6))
    if draw(st.integers(0, 3)) == 0:  # a request that is accepted, or nearly so
        method, path, headers = "POST", draw(st.sampled_from(PATHS[:-1])), [(b"authorization", basic("wk_web"))]
        one = dict(MESSAGE, messageId=draw(st.sampled_from(["m-1", "m-2", "m-3"])))
        content = orjson.dumps({"batch": [one, one]} if path in ("/v1/batch", "/v1/import", "/v1/b") else one)
    encoding = next((value for name, value in headers if name == b"content-encoding"), None)
    if encoding == b"gzip" and draw(st.booleans()):
        content = gzip.compress(content)
    elif encoding == b"deflate" and draw(st.booleans()):
        content = zlib.compress(content)
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=2)))
    chunks = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
    query = draw(st.sampled_from([b"", b"writeKey=wk_web", b"writeKey=wk_hook", b"writeKey=&writeKey=wk_hook", b"x=1"]))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"relay.test"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    return scope, chunks, draw(st.booleans()) and draw(st.booleans())


async def call(app: Any, scope: dict[str, Any], chunks: list[bytes], gone: bool) -> tuple[int, list[Any], bytes]:
    """Run one request through ``app``: the answer's status, headers (sorted) and body."""
    inbox: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    if gone:
        inbox[-1] = {"type": "http.disconnect"}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(dict(scope), receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in sent[1:])
    return start["status"], sorted(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.integration
def test_the_dispatch_answers_as_fastapis_routes_do(
    tmp_path: Path, redis_url: str, prefix: str, loop: asyncio.AbstractEventLoop
) -> None:
    destinations = tmp_path / "destinations.toml"
    destinations.write_text(
        '[[destinations]]\nwrite_key = "wk_web"\naccount_id = "ACC"\npasscode = "p"\n'
        f'[[destinations]]\nwrite_key = "wk_hook"\naccount_id = "ACC2"\npasscode = "p"\nwebhook_secret = "{SECRET}"\n'
    )
    config = load(
        Settings(destinations=destinations, redis_url=redis_url, redis_prefix=prefix, cors_origins=SHOP, max_depth=16)
    )
    app = create_app(config)
    # the same front without the dispatch: CORS straight in front of FastAPI's own stack (its routes of the paths)
    routes_only = CORS(functools.partial(FastAPI.__call__, app), parse_origins(SHOP), app.routes)
    seen: set[int] = set()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def same(request: tuple[dict[str, Any], list[bytes], bool]) -> None:
        scope, chunks, gone = request
        ours = loop.run_until_complete(call(app, scope, chunks, gone))
        theirs = loop.run_until_complete(call(routes_only, scope, chunks, gone))
        assert ours == theirs, scope
        assert ours[0] < 500, (scope, ours)
        seen.add(ours[0])

    try:
        same()
        assert {200, 400, 401, 403} <= seen  # the generated requests reach every kind of answer
    finally:
        loop.run_until_complete(app.state.ingest.client.aclose())
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


@given(st.lists(st.tuples(st.sampled_from([b"content-length", b"authorization", b"x-signature", b"host", b"a"]),
                          st.binary(max_size=8)), max_size=8))  # fmt: skip
def test_the_header_lookup_is_starlettes(headers: list[tuple[bytes, bytes]]) -> None:
    found = _headers({"headers": headers})
    starlette = Headers(scope={"type": "http", "headers": headers})
    for name in (b"content-length", b"content-encoding", b"authorization", b"x-signature"):
        assert found.get(name) == starlette.get(name.decode())


@given(
    st.lists(st.binary(max_size=30), max_size=4),
    st.booleans(),
    st.sampled_from([None, "0", "10", "abc", "99999"]),
    st.integers(1, 60),
)
def test_the_body_reader_is_starlettes_stream(chunks: list[bytes], gone: bool, length: str | None, limit: int) -> None:
    def inbox() -> Any:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        messages = messages or [{"type": "http.request", "body": b"", "more_body": False}]
        if gone:
            messages[-1] = {"type": "http.disconnect"}

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        return receive

    async def both() -> tuple[Any, Any]:
        outcomes = []
        for read in (
            lambda: body.receive(inbox(), length, limit),
            lambda: body.read(Request({"type": "http", "headers": []}, inbox()).stream(), length, limit),
        ):
            try:
                outcomes.append(("body", await read()))
            except ClientDisconnect:
                outcomes.append(("gone", None))
            except Exception as exc:
                outcomes.append((type(exc).__name__, str(exc)))
        return outcomes[0], outcomes[1]

    ours, theirs = asyncio.run(both())
    assert ours == theirs


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]),
    st.sampled_from([None, 0, 1000, 999]),
)
def test_timestamps_are_isoformats(moment: datetime, zone: timezone, micro: int | None) -> None:
    moment = moment.replace(tzinfo=zone) if micro is None else moment.replace(tzinfo=zone, microsecond=micro)
    expected = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_time(moment) == expected


def entries(n: int, tag: str) -> list[Entry]:
    return [Entry("s", 0, f"{i + 1}".encode(), i, b"w", f"{tag}-{i}".encode()) for i in range(n)]


def test_requests_of_one_turn_share_one_call_and_get_their_own_ids() -> None:
    calls: list[int] = []

    async def enqueue(batch: Any) -> list[bytes | None]:
        calls.append(len(batch))
        await asyncio.sleep(0)
        return [None if entry.message.endswith(b"-1") else entry.message for entry in batch]

    async def go() -> list[list[bytes | None]]:
        writes = Writes(enqueue, 5.0)
        return await asyncio.gather(*(writes.write(entries(n, f"r{n}")) for n in (1, 3, 2, 0)))

    answers = asyncio.run(go())
    assert calls == [6]
    assert answers == [[b"r1-0"], [b"r3-0", None, b"r3-2"], [b"r2-0", None], []]


def test_a_big_request_is_written_alone_and_a_full_call_starts_at_once() -> None:
    calls: list[int] = []

    async def enqueue(batch: Any) -> list[bytes | None]:
        calls.append(len(batch))
        return [entry.message for entry in batch]

    async def go() -> None:
        writes = Writes(enqueue, 5.0)
        sizes = (MOST, MOST - 10, 20, 5)
        answers = await asyncio.gather(*(writes.write(entries(n, str(n))) for n in sizes))
        assert [len(a) for a in answers] == list(sizes)

    asyncio.run(go())
    assert sorted(calls) == sorted([MOST, MOST - 10, 25])


def test_one_failure_fails_every_request_of_the_call_and_a_slow_call_times_out() -> None:
    async def broken(batch: Any) -> list[bytes | None]:
        raise redis.ConnectionError("down")

    async def frozen(batch: Any) -> list[bytes | None]:
        await asyncio.sleep(60)
        return []

    async def go() -> None:
        writes = Writes(broken, 5.0)
        failed = await asyncio.gather(*(writes.write(entries(2, str(i))) for i in range(3)), return_exceptions=True)
        assert all(isinstance(f, redis.ConnectionError) for f in failed)
        slow = Writes(frozen, 0.05)
        late = await asyncio.gather(*(slow.write(entries(1, str(i))) for i in range(2)), return_exceptions=True)
        assert all(isinstance(f, TimeoutError) for f in late)

    asyncio.run(go())


def test_a_call_cancelled_at_shutdown_cancels_its_requests() -> None:
    async def frozen(batch: Any) -> list[bytes | None]:
        await asyncio.sleep(60)
        return []

    async def go() -> None:
        writes = Writes(frozen, 30.0)
        waiting = [asyncio.ensure_future(writes.write(entries(1, str(i)))) for i in range(2)]
        await asyncio.sleep(0.01)
        for task in list(writes._tasks):
            task.cancel()
        done = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(d, asyncio.CancelledError) for d in done)

    asyncio.run(go())


@pytest.mark.integration
def test_dedup_holds_across_the_requests_of_one_call(redis_url: str, prefix: str) -> None:
    producer = Producer(Keys(prefix), 4, 60)
    one = {"type": "track", "userId": "u1", "event": "e", "messageId": "same"}

    async def go() -> list[list[bytes | None]]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            writes = Writes(lambda batch: producer.enqueue(client, batch), 5.0)
            return await asyncio.gather(*(writes.write([producer.entry("wk", dict(one))]) for _ in range(3)))
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert answers[0][0] is not None
    assert answers[1:] == [[None], [None]]
    client = redis.Redis.from_url(redis_url)
    try:
        assert sum(client.xlen(stream) for stream in producer.streams()) == 1
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def test_requests_that_come_while_a_call_is_in_flight_gather_for_the_next() -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def enqueue(batch: Any) -> list[bytes | None]:
        calls.append(len(batch))
        if len(calls) == 1:
            await release.wait()
        return [entry.message for entry in batch]

    async def go() -> list[list[bytes | None]]:
        writes = Writes(enqueue, 5.0)
        first = asyncio.ensure_future(writes.write(entries(2, "a")))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first call is in flight
        later = [asyncio.ensure_future(writes.write(entries(n, f"b{n}"))) for n in (1, 3)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        last = asyncio.ensure_future(writes.write(entries(1, "c")))  # another turn, still in flight
        await asyncio.sleep(0.01)
        assert calls == [2]  # nothing started while the first is in flight
        release.set()
        return list(await asyncio.gather(first, *later, last))

    answers = asyncio.run(go())
    assert calls == [2, 5]
    assert answers == [[b"a-0", b"a-1"], [b"b1-0"], [b"b3-0", b"b3-1", b"b3-2"], [b"c-0"]]


def test_a_callback_gets_its_ids_or_the_failure() -> None:
    got: list[Any] = []

    async def enqueue(batch: Any) -> list[bytes | None]:
        if any(entry.message.startswith(b"bad") for entry in batch):
            raise redis.ConnectionError("down")
        return [entry.message for entry in batch]

    async def go() -> None:
        writes = Writes(enqueue, 5.0)
        writes.add(entries(2, "ok"), got.append)
        writes.add([], got.append)  # at once
        await asyncio.sleep(0.01)
        writes.add(entries(1, "bad"), got.append)
        writes.add(entries(MOST, "big"), lambda result: got.append(len(result)))  # alone, as write() does
        await asyncio.sleep(0.01)

    asyncio.run(go())
    assert got[0] == []
    assert got[1] == [b"ok-0", b"ok-1"]
    assert sorted(type(answer).__name__ for answer in got[2:]) == ["ConnectionError", "int"]
    assert MOST in got[2:]
