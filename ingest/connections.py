"""Connection limits of ingest's HTTP server: what uvicorn does not bound by itself.

uvicorn (httptools) closes an idle keep-alive connection after ``timeout_keep_alive``, but it has no
timeout for a request head: a fresh connection that sends nothing, or a head sent one byte at a time
(slowloris), is held forever, and so is its file descriptor, until the process can accept no more.
:class:`GuardedHttpTools` is uvicorn's own protocol with three additions, all settings:

- **header timeout** (``CTRELAY_HEADER_TIMEOUT_S``): the request head (request line and headers) must
  be complete this long after the connection opened, or after the previous response on a keep-alive
  connection, else the connection is closed. Idle keep-alive connections are still closed by the
  keep-alive timeout (``CTRELAY_KEEP_ALIVE_TIMEOUT_S``) when it is the shorter.
- **head size** (``CTRELAY_MAX_HEADER_BYTES``): a request line and headers larger than this are refused
  with ``400 headers_too_large`` and the connection closed (httptools itself keeps any size in memory).
- **body timeout** (``CTRELAY_BODY_TIMEOUT_S``): the whole body must have arrived this long after the
  head, else the connection is closed (the request sees a disconnect): a body trickled in, or announced
  and never sent, cannot hold a request slot for ever.
- **maximum connections** (``CTRELAY_MAX_CONNECTIONS``) per process: a connection past it is closed as
  soon as it is accepted, so that the process always has descriptors left (``/healthz`` included once
  the excess is gone). The soft descriptor limit is raised to fit, up to the hard limit.
- **requests in progress** (``CTRELAY_LIMIT_CONCURRENCY``) per process: a request that arrives while
  that many are being handled gets uvicorn's ``503 Service Unavailable`` (clients retry it). Unlike
  uvicorn's own ``limit_concurrency``, open but idle connections do not count.

The limits are class attributes, set by :func:`configure` in each worker process (from the settings
that process read) before uvicorn creates any connection.

One more change, for CPU: uvicorn writes a response's head (at ``http.response.start``) and its body (at
``http.response.body``) in two writes to the socket, two system calls that each wake the client. A response here
is written in one: the head is held until the first body part (or the end of the response, or the connection's
close) and goes out with it (:class:`_Cycle`). Every answer of ingest sends its body right after its head.
"""

from __future__ import annotations

import asyncio
import resource
from typing import ClassVar

import structlog
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from worker.core.settings import Settings

log = structlog.get_logger("ctrelay.ingest")

_SPARE_DESCRIPTORS = 256
"""Descriptors beyond the connections: Redis, the metrics files, logs, the listening socket."""


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts, a connection cap and a cap on requests in
    progress. One timer per connection: the head's, then the body's, then the next head's."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 4096
    max_requests: ClassVar[int] = 256

    _timer: asyncio.TimerHandle | None = None
    _head_left: int | None = None
    """Bytes the current request head may still take; None once it is complete."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()  # accepted only to be closed: the descriptor is free again at once
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_left is None:
            super().data_received(data)
            return
        self._head_left -= len(data)
        super().data_received(data)  # (a chunk may hold a small head and much body: the parser says which)
        if self._head_left is not None and self._head_left < 0 and not self.transport.is_closing():
            self._refuse_head()

    def _refuse_head(self) -> None:
        body = b'{"code":"headers_too_large","message":"request line and headers larger than %d bytes"}' % (
            self.max_header_bytes
        )
        head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
        self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_left = None
        self._arm(self.body_timeout_s)
        # uvicorn answers 503 when len(connections) >= limit_concurrency or len(tasks) >= it: a limit of 0 when
        # the requests in progress are at the cap (and none otherwise) makes it count requests only.
        self.limit_concurrency = 0 if len(self.tasks) >= self.max_requests else None
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before and type(cycle) is RequestResponseCycle:  # (not yet run)
            cycle.__class__ = _Cycle
            cycle.transport = _Joining(cycle.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        if self.cycle.response_complete and self.timeout_keep_alive_task is not None:
            self._await_head()  # answered before its body was in (a 401): now waiting for a head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is None:  # closing, or a pipelined request started
            return
        if self.cycle.more_body:  # answered early (a 401): the rest of the body still has its timeout
            self._arm(self.body_timeout_s)
        else:  # kept alive, waiting for the next request's head
            self._await_head()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _await_head(self) -> None:
        """Wait for a request head: within the header timeout, and at most ``max_header_bytes``."""
        self._arm(self.header_timeout_s)
        self._head_left = self.max_header_bytes

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()


class _Joining:
    """The transport a response is written to: holds the head (while ``holding``) and writes it with what follows."""

    __slots__ = ("held", "holding", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.holding = False
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.holding:
            self.held, self.holding = data, False
            return
        if self.held is not None:
            data, self.held = self.held + data, None
        self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a response's head together with its first body part."""

    transport: _Joining  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        joining = self.transport
        if message["type"] == "http.response.start":
            joining.holding = True
            try:
                await super().send(message)
            finally:
                joining.holding = False
            return
        try:
            await super().send(message)
        finally:
            joining.flush()  # (a HEAD answer writes no body: its head goes now)


def configure(settings: Settings) -> None:
    """Set this process's limits from its settings, and make room for its connections' descriptors."""
    GuardedHttpTools.header_timeout_s = settings.header_timeout_s
    GuardedHttpTools.body_timeout_s = settings.body_timeout_s
    GuardedHttpTools.max_header_bytes = settings.max_header_bytes
    GuardedHttpTools.max_connections = settings.max_connections
    GuardedHttpTools.max_requests = settings.limit_concurrency
    needed = settings.max_connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning(
                "descriptor limit below max_connections",
                hard_limit=hard,
                max_connections=settings.max_connections,
                hint="raise the hard limit (ulimit -Hn) or lower CTRELAY_MAX_CONNECTIONS",
            )
