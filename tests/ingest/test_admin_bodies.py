"""The admin API reads nothing before the token check, reads bodies through ingest's bounded reader, answers a bad
body with a 400 (``code``, ``message``), and a frozen Redis with a 503 after ingest's short timeouts."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from admin_client import AUTH, TOKEN, AdminClient, config
from fastapi import FastAPI

from ingest.admin.mount import mount

pytestmark = pytest.mark.integration

POSTS = ["/admin/deadletters/replay", "/admin/deadletters/purge", "/admin/users/delete", "/admin/users/unsuppress"]


@pytest.fixture
def app(redis_url: str, prefix: str) -> FastAPI:
    app = FastAPI()
    assert mount(app, config(redis_url, prefix, TOKEN))
    return app


def _send(app: FastAPI, path: str, chunks: int, headers: dict[str, str]) -> tuple[httpx.Response, int]:
    """POST a body of ``chunks`` MiB (not JSON) as a stream; returns the answer and how many chunks were read."""
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(chunks):
            read += 1
            yield b"[" * (1024 * 1024)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as http:
            return await http.post(path, content=body(), headers=headers)

    return asyncio.run(send()), read


@pytest.mark.parametrize("path", POSTS)
def test_nothing_is_read_before_the_token_check(app: FastAPI, path: str) -> None:
    response, read = _send(app, path, 50, {"content-type": "application/json"})
    assert response.status_code == 401
    assert read <= 1  # (the transport may start the stream before the app answers)
    wrong, read = _send(app, path, 50, {"content-type": "application/json", "Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert read <= 1


@pytest.mark.parametrize("path", POSTS)
def test_a_bad_body_is_a_400_with_code_and_message(app: FastAPI, path: str) -> None:
    client = AdminClient(app)
    for content, code in (
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "too_deep"),
        (b'{"all": "perhaps", "destination": 3, "rate": -1}', "invalid_request"),
        (b"[1, 2]", "invalid_request"),
    ):
        answer = client.post(path, content=content, headers=AUTH)
        assert answer.status_code == 400, (path, content[:20], answer.text)
        assert answer.json()["code"] == code
        assert answer.json()["message"]
    too_big, read = _send(app, path, 50, AUTH)
    assert too_big.status_code == 400
    assert too_big.json()["code"] == "body_too_large"
    assert read <= 3  # refused as soon as more than CTRELAY_MAX_ADMIN_BODY_BYTES (1 MiB) arrived


@pytest.fixture
def frozen_redis() -> Iterator[str]:
    """A server that accepts connections and never answers: a Redis frozen (SIGSTOP, a dead network path)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_a_frozen_redis_is_a_503_after_the_short_timeouts(frozen_redis: str, prefix: str) -> None:
    app = FastAPI()
    assert mount(app, config(frozen_redis, prefix, TOKEN))
    admin = AdminClient(app)
    slowest = 0.0
    for method, path, body in (
        ("GET", "/admin/deadletters/stats", None),
        ("POST", "/admin/deadletters/purge", {"all": True}),
        ("POST", "/admin/users/delete", {"destination": "wk1", "user_id": "u1"}),
    ):
        started = time.perf_counter()
        response = admin.request(method, path, json=body, headers=AUTH)
        slowest = max(slowest, time.perf_counter() - started)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["code"] == "queue_unavailable"
    print(f"slowest 503 from a frozen Redis: {slowest:.2f} s")  # ~2 s: the read timeout (1 s) and one retry
    app.state.admin_redis.close()
