"""The one timer of a connection (ingest.connections.GuardedHttpTools): the header, body and keep-alive timeouts are
deadlines of it. On a fake transport, a plain ASGI app: a connection with no head is closed after the header
timeout; one that keeps sending requests is never closed, however many deadlines its timer saw move; a body that
stops is closed after the body timeout; an idle kept-alive one after the keep-alive timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from ingest import connections

REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection(keep_alive_s: float) -> tuple[connections.GuardedHttpTools, _Transport]:
    config = uvicorn.Config(_app, http=connections.GuardedHttpTools, lifespan="off", timeout_keep_alive=keep_alive_s)
    config.load()
    protocol = connections.GuardedHttpTools(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _answered(transport: _Transport, count: int) -> None:
    for _ in range(200):
        if sum(part.startswith(b"HTTP/1.1 200") for part in transport.written) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not answered: {transport.written}")


async def _closed_within(transport: _Transport, low: float, high: float) -> None:
    """Closed no sooner than ``low`` seconds from now, and by ``high``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not transport.closed and loop.time() - started < high + 1.0:
        await asyncio.sleep(0.005)
    took = loop.time() - started
    assert transport.closed
    assert low <= took <= high, took


def test_a_connection_that_sends_no_head_is_closed_after_the_header_timeout(monkeypatch: Any) -> None:
    monkeypatch.setattr(connections.GuardedHttpTools, "header_timeout_s", 0.3)

    async def go() -> None:
        _, transport = _connection(keep_alive_s=5.0)
        await _closed_within(transport, 0.25, 2.0)

    asyncio.run(go())


def test_a_body_that_stops_is_closed_after_the_body_timeout(monkeypatch: Any) -> None:
    monkeypatch.setattr(connections.GuardedHttpTools, "header_timeout_s", 10.0)
    monkeypatch.setattr(connections.GuardedHttpTools, "body_timeout_s", 0.3)

    async def go() -> None:
        protocol, transport = _connection(keep_alive_s=5.0)
        protocol.data_received(REQUEST[:-2])  # the head, not the body it announces
        await _closed_within(transport, 0.25, 2.0)

    asyncio.run(go())


def test_a_busy_connection_stays_open_and_is_closed_once_idle_past_the_keep_alive(monkeypatch: Any) -> None:
    """Requests every 0.1 s for 1.5 s, with header, body and keep-alive timeouts of 0.5, 0.5 and 0.4 s: every
    deadline moves later many times before the timer fires; the connection is closed only once idle."""
    monkeypatch.setattr(connections.GuardedHttpTools, "header_timeout_s", 0.5)
    monkeypatch.setattr(connections.GuardedHttpTools, "body_timeout_s", 0.5)

    async def go() -> None:
        protocol, transport = _connection(keep_alive_s=0.4)
        for number in range(1, 16):
            protocol.data_received(REQUEST)
            await _answered(transport, number)
            assert not transport.closed
            await asyncio.sleep(0.1)
        assert not transport.closed
        await _closed_within(transport, 0.2, 2.0)  # idle 0.1 s already: the keep-alive's 0.4 s

    asyncio.run(go())


def test_a_timer_that_fires_before_a_moved_deadline_is_scheduled_again(monkeypatch: Any) -> None:
    """The timer set for the first head's deadline (0.5 s) fires after a request moved the deadlines later (the
    keep-alive's, 0.4 s after its answer at ~0.3 s): it is scheduled again, and the idle connection closed then."""
    monkeypatch.setattr(connections.GuardedHttpTools, "header_timeout_s", 0.5)
    monkeypatch.setattr(connections.GuardedHttpTools, "body_timeout_s", 0.5)

    async def go() -> None:
        protocol, transport = _connection(keep_alive_s=0.4)
        await asyncio.sleep(0.3)
        protocol.data_received(REQUEST)
        await _answered(transport, 1)
        await _closed_within(transport, 0.3, 2.0)

    asyncio.run(go())
