"""Slow and idle clients against a real ``ctrelay ingest`` (uvicorn): 2,000 idle connections and 200 sending their
headers one byte a second are all closed by the header timeout, while normal requests get their 200; connections
past the per-process maximum are closed at once. Timeouts are set short here (seconds) to keep the test short."""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ingest_process import running_ingest

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]

IDLE, SLOW = 2000, 200
HEADER_TIMEOUT_S, KEEP_ALIVE_S = 2.0, 1.0
SLACK_S = 3.0
"""Closing is the server's timer firing on a loaded 2-core machine: allow this much past the timeout."""


def _room_for(descriptors: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < descriptors:
        if hard != resource.RLIM_INFINITY and hard < descriptors:
            pytest.skip(f"descriptor hard limit {hard} < {descriptors}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))


async def _closed_after(reader: asyncio.StreamReader, opened: float) -> float:
    """Seconds from ``opened`` until the server closed the connection (EOF or reset)."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        pass
    return time.monotonic() - opened


async def _slowloris(port: int, opened: list[float]) -> float:
    began = time.monotonic()  # before the connect: the server's timer starts at its accept, not later
    opened.append(began)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /v1/track HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nX-Padding: " + b"a" * 64
    closing = asyncio.ensure_future(_closed_after(reader, began))
    for byte in head:
        if closing.done():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            break
        await asyncio.wait([closing], timeout=1.0)
    took = await closing
    writer.close()
    return took


async def _idle(port: int) -> float:
    opened = time.monotonic()  # (as in _slowloris)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    took = await _closed_after(reader, opened)
    writer.close()
    return took


async def _normal(url: str, stop: asyncio.Event) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(base_url=url, timeout=10, auth=("wk_one", "")) as http:
        while not stop.is_set():
            answer = await http.post(
                "/v1/track", json={"userId": "u1", "event": "Normal", "messageId": uuid.uuid4().hex}
            )
            statuses.append(answer.status_code)
            statuses.append((await http.get("/healthz")).status_code)
            await asyncio.sleep(0.2)
    return statuses


def test_idle_and_slow_connections_are_closed_while_normal_requests_get_200(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    _room_for(IDLE + SLOW + 512)
    env = {
        "CTRELAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "CTRELAY_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "CTRELAY_MAX_CONNECTIONS": str(IDLE + SLOW + 100),
    }
    with running_ingest(redis_url, prefix, tmp_path, env=env) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])

        async def run() -> tuple[list[float], list[float], list[int]]:
            stop = asyncio.Event()
            normal = asyncio.ensure_future(_normal(ingest.url, stop))
            opened: list[float] = []
            idle = [asyncio.ensure_future(_idle(port)) for _ in range(IDLE)]
            slow = [asyncio.ensure_future(_slowloris(port, opened)) for _ in range(SLOW)]
            idle_times = await asyncio.gather(*idle)
            slow_times = await asyncio.gather(*slow)
            stop.set()
            return idle_times, slow_times, await normal

        idle_times, slow_times, statuses = asyncio.run(run())
    print(
        f"idle: {len(idle_times)} closed after {min(idle_times):.2f}-{max(idle_times):.2f} s; "
        f"slow: {len(slow_times)} closed after {min(slow_times):.2f}-{max(slow_times):.2f} s; "
        f"normal requests: {len(statuses)}, statuses {sorted(set(statuses))}"
    )
    assert len(idle_times) == IDLE
    assert len(slow_times) == SLOW
    assert max(idle_times) < HEADER_TIMEOUT_S + SLACK_S
    assert max(slow_times) < HEADER_TIMEOUT_S + SLACK_S  # a head trickled one byte a second never completes
    assert min(slow_times) >= HEADER_TIMEOUT_S - 0.5  # closed by the timer, not refused at once
    assert statuses
    assert set(statuses) == {200}


def test_connections_past_the_maximum_are_closed_at_once(redis_url: str, prefix: str, tmp_path: Path) -> None:
    cap = 50
    env = {"CTRELAY_HEADER_TIMEOUT_S": "30", "CTRELAY_MAX_CONNECTIONS": str(cap)}
    with running_ingest(redis_url, prefix, tmp_path, env=env) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])

        async def run() -> int:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap + 20)]
            closed = 0
            for reader, _ in held:
                try:
                    if await asyncio.wait_for(reader.read(1), timeout=0.2) == b"":
                        closed += 1
                except TimeoutError:
                    pass  # still open: within the cap
                except (ConnectionError, OSError):
                    closed += 1
            for _, writer in held:
                writer.close()
            return closed

        closed = asyncio.run(run())
        time.sleep(0.5)
        assert httpx.get(ingest.url + "/healthz", timeout=5).status_code == 200  # room again once they are gone
    assert closed == 20


def test_a_body_never_sent_is_cut_and_requests_past_the_cap_get_503(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {"CTRELAY_BODY_TIMEOUT_S": "2", "CTRELAY_LIMIT_CONCURRENCY": "2", "CTRELAY_HEADER_TIMEOUT_S": "30"}
    head = b"POST /v1/track HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with running_ingest(redis_url, prefix, tmp_path, env=env) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])

        async def run() -> tuple[list[float], int, int]:
            held = []
            for _ in range(2):  # two requests in progress, waiting for bodies that never come: the cap
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + b'{"userId":')
                await writer.drain()
                held.append((reader, writer, time.monotonic()))
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as http:
                refused = (await http.get("/healthz")).status_code
                cut = [await _closed_after(reader, opened) for reader, _, opened in held]
                served = (await http.get("/healthz")).status_code  # the slots are free again
            for _, writer, _ in held:
                writer.close()
            return cut, refused, served

        cut, refused, served = asyncio.run(run())
    print(f"bodies never sent: cut after {min(cut):.2f}-{max(cut):.2f} s")
    assert refused == 503
    assert served == 200
    assert all(1.5 <= took < 2 + SLACK_S for took in cut)
    assert "Traceback" not in (tmp_path / "ingest.log").read_text()
