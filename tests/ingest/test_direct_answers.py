"""The bytes of the answers ingest's HTTP protocol writes itself (ingest.connections._Direct.answer): the common 200's
are made once and kept, and must stay what uvicorn would write: the server's current ``date``, the request's CORS
headers, ``connection: close`` when the connection is not kept alive; and a handled request is freed once answered
(no reference to itself)."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest

from ingest import connections
from ingest.responses import ACCEPTED, DISCONNECTED

STAR = [(b"access-control-allow-origin", b"*")]
SHOP = [
    (b"access-control-allow-origin", b"https://shop.example.com"),
    (b"vary", b"Origin"),
    (b"access-control-expose-headers", b"Retry-After"),
]


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _protocol(date: bytes) -> Any:
    return SimpleNamespace(
        scope={},
        tasks=set(),
        server_state=SimpleNamespace(default_headers=[(b"date", date)]),
        on_response_complete=lambda: None,
    )


def _answered(protocol: Any, answer: Any, allow: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    protocol.transport = transport = _Transport()  # (a connection not kept alive is closed after its answer)
    direct = connections._Direct(protocol, None, allow, keep_alive)  # type: ignore[arg-type]
    direct.answer(answer)
    assert transport.closed is not keep_alive
    (written,) = transport.written
    return written


def _expected(date: bytes, answer: Any, allow: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ndate: %s\r\n" % (answer.status, b"OK" if answer.status == 200 else b"Bad Request", date)
    head += b"".join(b"%s: %s\r\n" % header for header in (*answer.headers, *allow))
    return head + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n" + answer.body


@pytest.mark.parametrize("allow", [[], STAR, SHOP])
@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_kept_200_is_what_uvicorn_writes_with_the_current_date(
    allow: list[tuple[bytes, bytes]], keep_alive: bool
) -> None:
    protocol = _protocol(b"Tue, 01 Dec 2026 20:00:00 GMT")
    for _ in range(2):  # made, then kept
        assert _answered(protocol, ACCEPTED, allow, keep_alive) == _expected(
            b"Tue, 01 Dec 2026 20:00:00 GMT", ACCEPTED, allow, keep_alive
        )
    for other in ([], STAR, SHOP):  # another request's CORS headers and keep-alive are its own
        for alive in (True, False):
            assert _answered(protocol, ACCEPTED, other, alive) == _expected(
                b"Tue, 01 Dec 2026 20:00:00 GMT", ACCEPTED, other, alive
            )
    later = b"Tue, 01 Dec 2026 20:00:01 GMT"
    protocol.server_state.default_headers = [(b"date", later)]  # uvicorn's new list, each second
    assert _answered(protocol, ACCEPTED, allow, keep_alive) == _expected(later, ACCEPTED, allow, keep_alive)
    assert _answered(protocol, DISCONNECTED, allow, keep_alive) == _expected(later, DISCONNECTED, allow, keep_alive)


def test_echoed_origins_do_not_grow_the_kept_answers_without_bound() -> None:
    protocol = _protocol(b"Tue, 01 Dec 2026 20:00:00 GMT")
    for n in range(connections._ACCEPTED_MOST * 3):
        allow = [(b"access-control-allow-origin", b"https://%d.example.com" % n)]
        assert _answered(protocol, ACCEPTED, allow, True) == _expected(
            b"Tue, 01 Dec 2026 20:00:00 GMT", ACCEPTED, allow, True
        )
        assert len(connections._accepted.made) <= connections._ACCEPTED_MOST


def test_a_handled_request_holds_no_reference_to_itself() -> None:
    """Once handled, a request's ``message_event`` (what uvicorn's protocol calls ``set()`` on) is no longer the
    request itself: freed once answered, with its scope, headers and body, without the cyclic collector; and the
    protocol's later ``set()`` calls (a late body part, the end, the connection's loss) still do nothing."""
    scheduled: list[Any] = []
    protocol = _protocol(b"Tue, 01 Dec 2026 20:00:00 GMT")
    protocol.loop = SimpleNamespace(call_soon=scheduled.append)
    direct = connections._Direct(protocol, None, [], True)  # type: ignore[arg-type]
    direct.start()  # its turn, the body not yet in: nothing to handle
    assert not scheduled
    assert direct in gc.get_referents(direct)
    direct.more_body = False
    direct.message_event.set()  # (what on_message_complete calls)
    assert scheduled == [direct._handle]
    assert direct not in gc.get_referents(direct)
    direct.disconnected = True
    direct.message_event.set()  # (what connection_lost calls)
    assert scheduled == [direct._handle]
