"""The tracking requests ingest's HTTP protocol answers itself (ingest.connections._Direct), against uvicorn's ASGI
path of the same application: generated raw HTTP/1.1 exchanges (pipelined requests, keep-alive and close, HTTP/1.0,
chunked bodies, Expect: 100-continue, gzip, wrong methods and paths, refused origins, oversize bodies, hostile
bytes) get byte-identical answers from two servers in one process, one with the protocol's own path and one
without it (the ``date`` header aside), and never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import uvicorn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest import connections
from ingest.app import create_app
from worker.cli.embedded import free_port
from worker.core.settings import Settings, load

SHOP = "https://shop.example.com"
PATHS = ["/v1/track", "/v1/t", "/v1/identify", "/v1/batch", "/v1/b", "/v1/webhook", "/v1/track/", "/v1/nope"]
PATHS.append("/healthz")
WEB = b"Basic " + base64.b64encode(b"wk_web:")
MESSAGE = {"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}
_ACCEPTED_BODY = orjson.dumps(dict(MESSAGE, messageId="m-accepted"))
ACCEPTED_EXCHANGE = (
    b"POST /v1/track HTTP/1.1\r\nHost: relay.test\r\nAuthorization: "
    + WEB
    + b"\r\nContent-Length: %d\r\n\r\n" % len(_ACCEPTED_BODY)
    + _ACCEPTED_BODY,
    1,
    1,
)
"""One valid, authenticated track: the exchange that must be answered 200 by both paths."""
PATIENT_S = 5.0
"""How long an answer that must come is waited for (a loaded machine's answer may take more than a moment)."""
QUIET_S = 0.4
"""How long the silence lasts that ends an exchange once every answer that must come is in."""


class _ThroughAsgi(connections.GuardedHttpTools):
    """The same protocol without its own path: every request through ASGI."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.direct = None


@contextlib.contextmanager
def servers(tmp_path: Path, redis_url: str, prefix: str) -> Iterator[tuple[int, int, Any]]:
    """Two uvicorn servers of one app on one loop (a thread): the protocol's own path, and ASGI only."""
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk_web"\naccount_id = "ACC"\npasscode = "p"\n')
    config = load(
        Settings(
            destinations=destinations,
            redis_url=redis_url,
            redis_prefix=prefix,
            cors_origins=SHOP,
            max_batch_bytes=4096,
            max_message_bytes=2048,
        )
    )
    app = create_app(config)
    ports = free_port(), free_port()
    made = [
        uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, http=http, lifespan=lifespan, log_level="critical",
                access_log=False, server_header=False, proxy_headers=False, loop="asyncio",
            )
        )
        for port, http, lifespan in ((ports[0], connections.GuardedHttpTools, "on"), (ports[1], _ThroughAsgi, "off"))
    ]  # fmt: skip
    for server in made:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()

    async def both() -> None:
        await asyncio.gather(*(server.serve() for server in made))

    thread = threading.Thread(target=loop.run_until_complete, args=(both(),), daemon=True)
    thread.start()
    try:
        for server in made:
            for _ in range(200):
                if server.started:
                    break
                threading.Event().wait(0.02)
        yield ports[0], ports[1], app
    finally:
        for server in made:
            server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():  # a loaded machine: still waiting for its connections; close them and stop
            for server in made:
                server.force_exit = True
            thread.join(timeout=60)
        loop.close()


def exchange(port: int, data: bytes, requests: int, firm: int | None = None) -> bytes:
    """Send ``data`` on one connection; what comes back until ``requests`` answers are in or the server closes (or
    nothing more comes for a while: a request whose body never ends waits for it). The first ``firm`` answers (default
    all) are waited for up to :data:`PATIENT_S` each, so that a loaded machine's slow answer is not cut short; past
    them, :data:`QUIET_S` of silence ends the exchange."""
    import socket

    firm = requests if firm is None else firm
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENT_S) as sock:
        sock.sendall(data)
        got = b""
        while (answers := _answers(got)) < requests:
            sock.settimeout(PATIENT_S if answers < firm else QUIET_S)
            try:
                part = sock.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            got += part
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", got)


def _answers(data: bytes) -> int:
    """Complete answers (not 100 Continue) at the start of ``data``; each carries a Content-Length."""
    count = 0
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return count
        head = data[:end]
        match = re.search(rb"(?i)content-length: *(\d+)", head)
        length = int(match.group(1)) if match else 0
        if len(data) < end + 4 + length:
            return count
        if not head.startswith(b"HTTP/1.1 100"):
            count += 1
        data = data[end + 4 + length :]


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """One connection's bytes: one to three requests, pipelined; how many requests; how many of them come before the
    first whose body never ends (``over``, or a length without its body: a server waits for the rest) or that is a
    ``HEAD`` (its answer cannot be told complete): the answers that must come."""
    parts: list[bytes] = []
    count = draw(st.integers(1, 3))
    firm: int | None = None
    for n in range(count):
        method = draw(st.sampled_from(["POST"] * 6 + ["PUT", "GET", "OPTIONS", "HEAD"]))
        if method == "HEAD":  # its answer names a length but has no body: what follows cannot be counted as answers
            firm = n if firm is None else firm
        path = draw(st.sampled_from(PATHS))
        one = dict(MESSAGE, messageId=draw(st.sampled_from(["m-1", "m-2", f"m-{n}-x"])))
        content = draw(
            st.sampled_from(
                [
                    orjson.dumps(one),
                    orjson.dumps({"batch": [one, one]}),
                    orjson.dumps({"userId": "u"}),
                    b"x" * 5000,
                    b"{",
                    b"",
                    orjson.dumps(dict(one, writeKey="wk_web")),
                ]
            )
        )
        headers = [b"Host: relay.test"]
        headers += draw(
            st.lists(
                st.sampled_from(
                    [
                        b"Authorization: " + WEB,
                        b"Authorization: Basic !!!",
                        b"Content-Type: text/plain",
                        b"Origin: " + SHOP.encode(),
                        b"Origin: https://evil.example",
                        b"Expect: 100-continue",
                        b"Connection: close",
                        b"Content-Encoding: gzip",
                        b"Access-Control-Request-Method: POST",
                    ]
                ),
                max_size=4,
                unique=True,
            )
        )
        if b"Content-Encoding: gzip" in headers and draw(st.booleans()):
            content = gzip.compress(content)
        framing = draw(st.sampled_from(["length"] * 4 + ["chunked", "none", "over"]))
        if framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
            half = len(content) // 2
            wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (content[:half], content[half:]) if c) + b"0\r\n\r\n"
        elif framing == "over":
            firm = n if firm is None else firm
            headers.append(b"Content-Length: 99999")
            wire = content
        else:
            if framing == "length" or content:
                headers.append(b"Content-Length: %d" % len(content))
            wire = content if framing == "length" else b""
            if framing == "none" and content:  # a length named, no body sent: it never ends
                firm = n if firm is None else firm
        version = draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"]))
        parts.append(method.encode() + b" " + path.encode() + b" " + version + b"\r\n" + b"\r\n".join(headers))
        parts[-1] += b"\r\n\r\n" + wire
    if draw(st.integers(0, 9)) == 0:
        hostile = [b"GARBAGE\r\n\r\n", b"POST /v1/track HTTP/1.1\r\nContent-Length: x\r\n\r\n"]
        parts.append(draw(st.sampled_from(hostile)))
        count += 1
    return b"".join(parts), count, count if firm is None else firm


@pytest.mark.integration
def test_the_protocols_own_answers_equal_the_asgi_paths(tmp_path: Path, redis_url: str, prefix: str) -> None:
    seen: set[int] = set()
    with servers(tmp_path, redis_url, prefix) as (direct, through, _):

        @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(exchanges())
        @example(ACCEPTED_EXCHANGE)  # (a 200 every run: twice in 250 generated exchanges none was one)
        def same(case: tuple[bytes, int, int]) -> None:
            data, count, firm = case
            ours = exchange(direct, data, count, firm)
            theirs = exchange(through, data, count, firm)
            assert ours == theirs, data
            statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3})", ours)]
            assert all(code < 500 for code in statuses), (data, ours)
            seen.update(statuses)

        try:
            same()
        finally:
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
            client.close()
    assert {200, 400, 401, 403, 405} <= seen  # the generated exchanges reach every kind of answer


@pytest.mark.integration
def test_the_protocols_own_path_takes_the_common_requests(
    tmp_path: Path, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common request does take the protocol's own path (no ASGI call), and is written to Redis."""
    with servers(tmp_path, redis_url, prefix) as (direct, _, app):
        called: list[str] = []
        front = app.front

        async def spy(scope: Any, receive: Any, send: Any) -> None:
            called.append(scope["path"])
            await front(scope, receive, send)

        monkeypatch.setattr(app, "front", spy)
        body = orjson.dumps(dict(MESSAGE, messageId="direct-1"))
        head = b"POST /v1/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nAuthorization: " + WEB
        answer = exchange(direct, head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body, 1)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b'{"success":true}')
        assert called == []
        answer = exchange(direct, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert called == ["/healthz"]
        client = redis.Redis.from_url(redis_url)
        try:
            streams = [key for key in client.scan_iter(match=f"{prefix}:*stream*") if client.type(key) == b"stream"]
            assert sum(client.xlen(key) for key in streams) == 1
        finally:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
            client.close()
