"""A Redis to talk to: the configured one when it answers, else an embedded one.

Used by ``ctrelay dev`` and by the test suite. The embedded Redis is the ``redis-server`` binary
when it is on the PATH (started on a free loopback port, keeping nothing on disk, in a session of its
own so that the terminal's Ctrl-C reaches only the process that stops it), else an in-process fakeredis
TCP server.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class RedisHandle:
    """Where the Redis is, what kind it is (``configured``, ``redis-server`` or ``fakeredis``)."""

    url: str
    kind: str


def wait_until_answers(url: str, deadline_s: float = 10.0) -> None:
    """Return once a Redis answers PING at ``url``; RuntimeError after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if answers(url, timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Redis at {url} did not answer within {deadline_s:.0f}s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM ``process`` and reap it; SIGKILL it if it is still there after ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[RedisHandle]:
    """Run ``redis-server`` on a free port in a temporary directory, stopped on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ctrelay-redis-") as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", workdir, "--daemonize", "no", "--loglevel", "warning"]
        # its own session: Ctrl-C in the terminal must not reach it (it is stopped last, after what uses it)
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_until_answers(url)
            yield RedisHandle(url=url, kind="redis-server")
        finally:
            stop_process(process)


@contextlib.contextmanager
def fake_server() -> Iterator[RedisHandle]:
    """Run an in-process fakeredis TCP server on a free port, stopped on exit."""
    from fakeredis import TcpFakeServer

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until_answers(url)
        yield RedisHandle(url=url, kind="fakeredis")
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def ensure_redis(url: str, *, prefer_binary: bool = True) -> Iterator[RedisHandle]:
    """Yield the configured Redis when it answers, else an embedded one for the block's duration."""
    if answers(url):
        yield RedisHandle(url=url, kind="configured")
        return
    binary = shutil.which("redis-server") if prefer_binary else None
    embedded = redis_server(binary) if binary else fake_server()
    with embedded as handle:
        yield handle
