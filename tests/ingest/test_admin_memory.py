"""A real ``ctrelay ingest`` with the admin API: a 200 MB body without (or with a wrong) token is refused with a 401
before any of it is read, and with the token it is refused (400) after the admin body limit; the process's peak
resident memory (``VmHWM`` in /proc/<pid>/status) grows by less than 20 MB meanwhile."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest
from ingest_process import running_ingest

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]

TOKEN = "admin-token-for-the-memory-test"
SIZE = 200 * 1024 * 1024
CHUNK = b"[" * (1024 * 1024)


def peak_kib(pid: int) -> int:
    """The process's peak resident set (kB), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def post_huge(port: int, path: str, authorization: str | None) -> tuple[int, int]:
    """POST a 200 MB body (``Content-Length`` given, all of it sent unless the server closes); returns the status
    and how many bytes went out."""
    head = f"POST {path} HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nContent-Length: {SIZE}\r\n"
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head.encode() + b"\r\n")

        def pour() -> None:
            nonlocal sent
            try:
                while sent < SIZE:
                    conn.sendall(CHUNK)
                    sent += len(CHUNK)
            except OSError:
                pass  # the server closed the connection: it wanted no more

        pourer = threading.Thread(target=pour)
        pourer.start()
        answer = conn.recv(4096)
        pourer.join(timeout=60)
    return int(answer.split(b" ", 2)[1]), sent


def test_a_200_mb_admin_body_is_refused_without_memory(redis_url: str, prefix: str, tmp_path: Path) -> None:
    with running_ingest(redis_url, prefix, tmp_path, env={"CTRELAY_ADMIN_TOKEN": TOKEN}) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])
        pid = ingest.process.pid
        post_huge(port, "/admin/deadletters/stats", f"Bearer {TOKEN}")  # warm up: imports, first request
        before = peak_kib(pid)
        outcomes = [
            post_huge(port, path, authorization)
            for path in ("/admin/deadletters/purge", "/admin/users/delete", "/admin/deadletters/import")
            for authorization in (None, "Bearer wrong", f"Bearer {TOKEN}")
        ]
        grown_mib = (peak_kib(pid) - before) / 1024
    print(f"peak RSS grew {grown_mib:.1f} MiB over {len(outcomes)} bodies of 200 MB; (status, bytes sent): {outcomes}")
    statuses = [status for status, _ in outcomes]
    assert statuses == [401, 401, 400] * 3
    assert grown_mib < 20


def test_a_huge_request_head_is_refused_without_memory(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """httptools would keep a request line or header of any size: ingest refuses one past CTRELAY_MAX_HEADER_BYTES."""
    with running_ingest(redis_url, prefix, tmp_path) as ingest:
        port = int(ingest.url.rsplit(":", 1)[1])
        pid = ingest.process.pid
        before = peak_kib(pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: ingest\r\nX-Big: " + b"a" * 200_000)
            answer = conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b'"code":"headers_too_large"' in answer
        for start in (b"GET /healthz?", b"GET /healthz HTTP/1.1\r\nX-Big: "):  # 100 MB of URL, then of header
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                try:
                    conn.sendall(start)
                    for _ in range(100):
                        conn.sendall(CHUNK)
                except OSError:
                    pass  # refused and closed long before the end
        grown_mib = (peak_kib(pid) - before) / 1024
        assert httpx.get(ingest.url + "/healthz", timeout=5).status_code == 200
    print(f"peak RSS grew {grown_mib:.1f} MiB over two 100 MB request heads")
    assert grown_mib < 20
