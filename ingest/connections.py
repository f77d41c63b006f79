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

And the common tracking request is answered by the protocol itself (:class:`_Direct`), without an ASGI task, its
receive and send, or the middleware: a ``POST`` (or a webhook's ``PUT``/``PATCH``) to a Tracking API path that the
dispatch serves (:class:`~ingest.tracking.dispatch.Direct`), from an origin CORS lets through, with a
``Content-Length`` of at most 64 KiB (uvicorn's read buffer; and within the body cap) and no ``Transfer-Encoding``,
no ``Expect: 100-continue``, no upgrade, no ``%`` in the path, no ``root_path``, below the cap of requests in
progress and without an access log. Its body is gathered as uvicorn gathers it; once it is all in, the handler
(:meth:`~ingest.tracking.routes.Ingest.submit`) takes it and calls back with the answer, which is written as uvicorn
writes it (status line, the server's default headers, the answer's, the CORS headers, ``connection: close`` when the
connection is not kept alive) in one write (the 200's bytes made once per second: :class:`_Accepted`). Once handled,
a request no longer refers to itself: it is freed when the connection's next request replaces it (the last one of a
connection goes with the connection), not by the cyclic collector. Pipelined requests wait their turn in uvicorn's
queue; a client gone before its body is in gets nothing, as through ASGI; an unexpected error is logged as both
layers log it and answered the 500 of the CORS middleware, and the connection is closed, as uvicorn does after a
started answer. Any other request goes through ASGI as before.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, ClassVar

import httptools
import structlog
from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from ingest import body
from ingest.cors import CRASHED
from ingest.responses import ACCEPTED, Answer
from ingest.tracking.dispatch import Direct, Target
from worker.core.settings import Settings

log = structlog.get_logger("ctrelay.ingest")

_SPARE_DESCRIPTORS = 256
"""Descriptors beyond the connections: Redis, the metrics files, logs, the listening socket."""


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts, a connection cap and a cap on requests in
    progress.

    The timeouts (the head's, then the body's, then the next head's, and uvicorn's keep-alive) are deadlines of one
    timer per connection, which is not made again per request: arming a deadline sets a float, and a timer is only
    scheduled anew when the deadline comes before the scheduled one; when the timer fires before a deadline that
    moved later (the connection served requests meanwhile), it is scheduled again for it. A connection is closed
    once a deadline is past (within :data:`_EARLY` of it: the loop's clock has millisecond steps)."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 4096
    max_requests: ClassVar[int] = 256

    _timer: asyncio.TimerHandle | None = None
    """The connection's one scheduled callback (:meth:`_tick`): it fires no later than the earliest deadline."""
    _timer_at = 0.0
    _guard_at: float | None = None
    """The header's or the body's deadline (loop time), when one runs."""
    _idle_at: float | None = None
    """The keep-alive deadline, while uvicorn's ``timeout_keep_alive_task`` is set (:class:`_KeepAlive`)."""
    _head_left: int | None = None
    """Bytes the current request head may still take; None once it is complete."""
    direct: Direct | None = None
    """The application's tracking requests this protocol answers itself (none when the app has none)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._keep_alive = _KeepAlive(self)
        self.direct = getattr(self.app, "direct", None)
        if len(self.connections) > self.max_connections:
            transport.close()  # accepted only to be closed: the descriptor is free again at once
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_timer()

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
        direct = self._direct() if self.direct is not None and self.limit_concurrency is None else None
        if direct is not None:
            existing = self.cycle
            self.cycle = direct  # type: ignore[assignment]
            if existing is None or existing.response_complete:
                direct.start()
            else:  # pipelined: its turn comes in on_response_complete (_start_asgi_task), as uvicorn's cycles'
                self.flow.pause_reading()
                self.pipeline.appendleft((direct, self.app))  # type: ignore[arg-type]
            return
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before and type(cycle) is RequestResponseCycle:  # (not yet run)
            cycle.__class__ = _Cycle
            cycle.transport = _Joining(cycle.transport)  # type: ignore[assignment]

    def _direct(self) -> _Direct | None:
        """The request whose head just ended as one this protocol answers itself, or None (then: through ASGI)."""
        direct = self.direct
        assert direct is not None
        if self.expect_100_continue or self.root_path or self.access_log or self.parser.should_upgrade():
            return None
        method = self.parser.get_method()
        if method not in _METHODS:
            return None
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        if b"%" in raw_path:
            return None
        length: bytes | None = None
        origin: bytes | None = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"transfer-encoding":
                return None
            elif name == b"origin" and origin is None:
                origin = value
        cap = min(HIGH_WATER_LIMIT, direct.ingest.settings.max_batch_bytes + body.WIRE_SLACK)
        if length is None or not length.isdigit() or int(length) > cap:
            return None
        if origin is not None and HEADER_VALUE_RE.search(origin):  # uvicorn would refuse to echo it
            return None
        scope = self.scope
        version = self.parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["method"] = method.decode("ascii")
        scope["path"] = raw_path.decode("ascii")
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        found = direct.route(scope)  # type: ignore[arg-type]
        if found is None:
            return None
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        return _Direct(self, found[0], found[1], keep_alive)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if isinstance(cycle, _Direct):  # a pipelined tracking request's turn
            cycle.start()
        else:
            super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        if self.cycle.response_complete and self.timeout_keep_alive_task is not None:
            self._await_head()  # answered before its body was in (a 401): now waiting for a head

    def on_response_complete(self) -> None:
        # uvicorn's own, but for its keep-alive timer: a deadline of this connection's one timer (_KeepAlive)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request starts
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_at = self.loop.time() + self.timeout_keep_alive
        self.timeout_keep_alive_task = self._keep_alive  # type: ignore[assignment]
        if self.cycle.more_body:  # answered early (a 401): the rest of the body still has its timeout
            self._arm(self.body_timeout_s)
        else:  # kept alive, waiting for the next request's head
            self._await_head()

    def _arm(self, seconds: float) -> None:
        self._guard_at = at = self.loop.time() + seconds
        self._schedule(at)

    def _await_head(self) -> None:
        """Wait for a request head: within the header timeout, and at most ``max_header_bytes``."""
        self._arm(self.header_timeout_s)
        self._head_left = self.max_header_bytes

    def _disarm(self) -> None:
        self._guard_at = None

    def _schedule(self, at: float) -> None:
        """Have the timer fire no later than ``at``."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self.loop.time() + _EARLY
        guard, idle = self._guard_at, self._idle_at
        if (guard is not None and guard <= now) or (idle is not None and idle <= now):
            if not self.transport.is_closing():
                self.transport.close()
            return
        at = idle if guard is None else guard if idle is None else min(guard, idle)
        if at is not None:
            self._schedule(at)

    def _stop_timer(self) -> None:
        self._guard_at = self._idle_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_EARLY = 0.002
"""How early a deadline may be taken as past: the loop's clock (uvloop's) moves in milliseconds and a timer's delay
is rounded to them, so a timer may fire that much before its deadline by the clock."""


class _KeepAlive:
    """What uvicorn's protocol holds as its keep-alive timer (``timeout_keep_alive_task``): cancelling it clears the
    connection's keep-alive deadline (on any data received, the connection's loss or the next response)."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: GuardedHttpTools) -> None:
        self.protocol = protocol

    def cancel(self) -> None:
        self.protocol._idle_at = None


_CRASHED = Answer(500, CRASHED, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(CRASHED))])
"""The CORS middleware's answer to an unexpected error (its CORS headers follow)."""
_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
"""The methods of the tracking paths (each path's own are checked by its target)."""


class _Handled:
    """What a handled :class:`_Direct` holds as its ``message_event``: the protocol's ``set()`` of a request that
    is handled already does nothing (as :meth:`_Direct.set` would)."""

    __slots__ = ()

    def set(self) -> None:
        return None


_HANDLED = _Handled()


class _Direct:
    """A tracking request this protocol answers itself: what uvicorn's protocol reads and sets of a cycle (the body
    gathered so far, whether more is to come, the connection's state, ``message_event.set()`` on each part and at
    the end or the connection's loss), and its handling once its turn came and its body is in."""

    __slots__ = (
        "allow",
        "body",
        "disconnected",
        "handled",
        "keep_alive",
        "message_event",
        "more_body",
        "protocol",
        "response_complete",
        "scope",
        "started",
        "target",
    )

    def __init__(
        self,
        protocol: GuardedHttpTools,
        target: Target,
        allow: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.scope = protocol.scope  # (the protocol's is the next request's once that one begins: pipelined)
        self.target = target
        self.allow = allow
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.response_complete = False
        self.disconnected = False
        self.started = False
        self.handled = False
        self.message_event: _Direct | _Handled = self  # (uvicorn's protocol calls cycle.message_event.set())

    def start(self) -> None:
        """Its turn: counted among the requests in progress (the cap, a graceful shutdown's wait) until answered."""
        self.started = True
        self.protocol.tasks.add(self)  # type: ignore[arg-type]
        self.set()

    def cancel(self, msg: Any = None) -> None:
        """What uvicorn does to the requests still in progress when its graceful shutdown times out: the answer
        written later is dropped with the connection."""
        self.disconnected = True

    def set(self) -> None:
        if self.started and not self.handled and (self.disconnected or not self.more_body):
            self.handled = True  # handled in the next turn, as an ASGI task's step would run (and see what it sees)
            # from now on set() does nothing: the reference to itself goes, so that the request (its scope, headers
            # and body) is freed by reference counting once the connection's next request replaces it, not kept for
            # the cyclic collector (9 objects per request)
            self.message_event = _HANDLED
            self.protocol.loop.call_soon(self._handle)

    def _handle(self) -> None:
        if self.disconnected:
            log.debug("client went away before its body was read", path=self.target.route)
            self.protocol.tasks.discard(self)
            return
        target = self.target
        ingest = self.protocol.direct.ingest  # type: ignore[union-attr]
        try:
            ingest.submit(
                self.scope,  # type: ignore[arg-type]
                bytes(self.body),
                kind=target.kind,
                implied_type=target.implied_type,
                route=target.route,
                done=self.answer,
            )
        except Exception as exc:
            self.answer(exc)

    def answer(self, outcome: Answer | BaseException) -> None:
        """Write the answer as uvicorn writes an ASGI answer, in one write (nothing when the client went away)."""
        protocol = self.protocol
        protocol.tasks.discard(self)
        crashed = isinstance(outcome, BaseException)
        if isinstance(outcome, BaseException):
            log.error("unexpected error", error=type(outcome).__name__, exc_info=outcome)
            protocol.logger.error("Exception in ASGI application\n", exc_info=outcome)
            answer = _CRASHED
        else:
            answer = outcome
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            return
        default = protocol.server_state.default_headers
        if answer is ACCEPTED:  # the common answer: its bytes made once per date (and CORS headers, keep-alive)
            key = (*self.allow, self.keep_alive)
            if _accepted.default is not default:
                _accepted.default, _accepted.made = default, {}
            made = _accepted.made.get(key)
            if made is None:
                if len(_accepted.made) >= _ACCEPTED_MOST:
                    _accepted.made.clear()
                made = _accepted.made[key] = _written(default, answer, self.allow, self.keep_alive)
        else:
            made = _written(default, answer, self.allow, self.keep_alive)
        transport.write(made)
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
        if crashed and not transport.is_closing():
            transport.close()


def _written(
    default: list[tuple[bytes, bytes]], answer: Answer, allow: list[tuple[bytes, bytes]], keep_alive: bool
) -> bytes:
    """An answer's bytes as uvicorn writes them: status line, the server's default headers, the answer's, the CORS
    headers, ``connection: close`` when the connection is not kept alive, the blank line and the body."""
    parts = [STATUS_LINE[answer.status]]
    for name, value in (*default, *answer.headers, *allow):
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", answer.body)
    return b"".join(parts)


class _Accepted:
    """The bytes of ``200 {"success":true}`` by CORS headers and keep-alive, for one list of the server's default
    headers (uvicorn makes a new one each second, for its ``date``): the answer of nearly every request, made ~2 µs
    per request before."""

    __slots__ = ("default", "made")

    def __init__(self) -> None:
        self.default: list[tuple[bytes, bytes]] | None = None
        self.made: dict[tuple[object, ...], bytes] = {}


_accepted = _Accepted()
_ACCEPTED_MOST = 64
"""Answers kept at most (an echoed origin is part of the key: hostile origins must not grow it without bound)."""


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
