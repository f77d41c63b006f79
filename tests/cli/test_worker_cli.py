"""Two ``ctrelay worker`` processes on one host, both asked for the same metrics port: both run, the second
serves its metrics on the next free port and says so, and both deliver."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
from delivery_e2e import Relay, enqueue, http_ok, tracks, wait_for

from worker.cli.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def ready_line(log: Path) -> dict[str, object] | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"worker_ready"' in line:
            found: dict[str, object] = json.loads(line)
            return found
    return None


def metrics_port(log: Path) -> object:
    line = ready_line(log)
    assert line is not None
    return line["metrics_port"]


def test_a_second_worker_on_the_host_runs_with_its_metrics_on_the_next_free_port(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox()
    relay.destinations([{"write_key": "wk1", "account_id": "ACC-1", "passcode": "p"}])
    port = free_port()
    first = relay.start_worker(CTRELAY_METRICS_PORT=str(port))
    wait_for(lambda: ready_line(first.log) is not None, 60, "the first worker to be ready", first)
    second = relay.start_worker(CTRELAY_METRICS_PORT=str(port))
    wait_for(lambda: ready_line(second.log) is not None, 60, "the second worker to be ready", second)

    assert first.process.poll() is None, first.tail()
    assert second.process.poll() is None, second.tail()
    assert metrics_port(first.log) == port
    moved = metrics_port(second.log)
    assert isinstance(moved, int)
    assert moved not in (port, 0)
    assert "metrics_port_taken" in second.log.read_text(), second.tail()
    for served in (port, moved):
        assert http_ok(f"http://127.0.0.1:{served}/metrics")
        assert "ctrelay_stream_lag" in httpx.get(f"http://127.0.0.1:{served}/metrics", timeout=5).text

    enqueue(redis_client, relay, "wk1", tracks(200))
    wait_for(lambda: len(relay.records()) >= 200, 60, "both workers to deliver the messages")
    assert first.process.poll() is None
    assert second.process.poll() is None
