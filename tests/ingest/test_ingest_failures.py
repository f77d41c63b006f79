"""Backpressure and failure: Redis down or frozen → 503 with Retry-After (never a hang), back → 200
without restarting ingest; a backlog above its cap → 503. Uses a redis-server of its own on another
port (the shared one is never touched)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from delivery_e2e import wait_for
from ingest_process import queued, running_ingest

from worker.cli.embedded import free_port, stop_process, wait_until_answers

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.chaos]


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not found")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_answers(f"redis://127.0.0.1:{port}/0", deadline_s=15)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a redis-server, frozen (SIGSTOP) or not."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)
    stop_process(process)


def track() -> dict[str, str]:
    return {"userId": "u1", "event": "E", "messageId": uuid.uuid4().hex}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    processes = [start_redis(port, tmp_path)]
    yield port, processes
    for process in processes:
        stop(process)


def test_redis_down_then_back(own_redis: tuple[int, list[subprocess.Popen[bytes]]], tmp_path: Path) -> None:
    port, processes = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    env = {"CTRELAY_REDIS_TIMEOUT": "0.3", "CTRELAY_RETRY_AFTER": "7"}
    with running_ingest(url, "test-down", tmp_path, env) as ingest, ingest.client(auth=("wk_one", "")) as http:
        assert http.post("/v1/track", json=track()).status_code == 200

        stop(processes.pop())  # Redis goes away
        refused = http.post("/v1/track", json=track())
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "7"
        assert refused.json()["code"] == "queue_unavailable"
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200

        processes.append(start_redis(port, tmp_path))  # and comes back, on the same port
        kept = track()
        wait_for(lambda: http.post("/v1/track", json=kept).status_code == 200, 15, "ingest to accept again")
        assert http.get("/readyz").status_code == 200
        client = redis.Redis.from_url(url)
        assert [e.message["messageId"] for e in queued(client, "test-down")] == [kept["messageId"]]
        client.close()


def test_frozen_redis_gets_503_not_a_hang(own_redis: tuple[int, list[subprocess.Popen[bytes]]], tmp_path: Path) -> None:
    port, processes = own_redis
    env = {"CTRELAY_REDIS_TIMEOUT": "0.3"}
    url = f"redis://127.0.0.1:{port}/0"
    with running_ingest(url, "test-frozen", tmp_path, env) as ingest, ingest.client(auth=("wk_one", "")) as http:
        assert http.post("/v1/track", json=track()).status_code == 200
        os.kill(processes[0].pid, signal.SIGSTOP)
        try:
            refused = http.post("/v1/track", json=track(), timeout=10)  # the client would give up first
            assert (refused.status_code, refused.json()["code"]) == (503, "queue_unavailable")
            assert "Retry-After" in refused.headers
        finally:
            os.kill(processes[0].pid, signal.SIGCONT)
        wait_for(lambda: http.post("/v1/track", json=track()).status_code == 200, 15, "ingest to accept again")


def test_dead_port_from_the_start(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with running_ingest(url, "test-dead", tmp_path) as ingest, ingest.client(auth=("wk_one", "")) as http:
        refused = http.post("/v1/batch", json={"batch": [{"type": "track", **track()}]})
        assert (refused.status_code, refused.json()["code"]) == (503, "queue_unavailable")
        assert http.get("/readyz").status_code == 503


def test_backlog_above_the_cap(redis_url: str, prefix: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    env = {"CTRELAY_BACKLOG_CAP": "3", "CTRELAY_BACKLOG_INTERVAL": "0.1"}
    with running_ingest(redis_url, prefix, tmp_path, env) as ingest, ingest.client(auth=("wk_one", "")) as http:
        batch = {"batch": [{"type": "track", **track()} for _ in range(5)]}
        assert http.post("/v1/batch", json=batch).status_code == 200

        def refused() -> bool:
            response = http.post("/v1/track", json=track())
            return response.status_code == 503 and response.json()["code"] == "backlog_full"

        wait_for(refused, 15, "the backlog cap to apply")  # probes sent before the next measure were accepted
        held = len(queued(redis_client, prefix))
        assert held >= 5
        assert refused()
        assert len(queued(redis_client, prefix)) == held  # a refused request enqueues nothing
        assert f"ctrelay_queue_length {held}.0" in http.get("/metrics").text
