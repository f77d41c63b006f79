"""Redis restarts under load: no worker exits, nothing is lost, duplicates stay rare and are counted.

Real processes on a ``redis-server`` of the test's own (AOF, ``appendfsync always``): ingest, two workers with
the default leases and budgets (as the chaos test runs them), the sandbox answering after 300 ms. A sender
posts batches of tracks (each one event record carrying its messageId) and retries what ingest refuses; Redis
is SIGKILLed and started again ``REDIS_RESTARTS`` times (5 here; 50 with ``REDIS_RESTARTS=50``, the long
version), then everything drains. Checked: no worker process exited, every accepted message reached the
sandbox, extra copies ≤ 1 % of the messages, and no more than the workers counted in
``ctrelay_duplicates_suspected_total``.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from chaos_cluster import WORKER_ENV, Cluster, RedisServer, queue_state
from delivery_e2e import Relay

from worker.cli.embedded import free_port

RESTARTS = int(os.environ.get("REDIS_RESTARTS", "5"))
LATENCY_MS = float(os.environ.get("REDIS_RESTARTS_LATENCY_MS", "300"))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(int(120 + RESTARTS * 8)),
    pytest.mark.skipif(not any(Path(p, "redis-server").exists() for p in os.get_exec_path()), reason="no redis-server"),
]


class Sender(threading.Thread):
    """Batches of 20 tracks, about ``rate`` messages/s; a refused batch is sent again (same messageIds)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.accepted: set[str] = set()
        self.answers: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, auth=("wk-a", ""), timeout=5) as http:
            while not self.stopping.is_set():
                mids = [uuid.uuid4().hex for _ in range(20)]
                batch = [
                    {"type": "track", "event": "Tick", "userId": f"u{random.randrange(200)}", "messageId": m,
                     "properties": {"mid": m}}
                    for m in mids
                ]  # fmt: skip
                while not self.stopping.is_set():
                    try:
                        status = str(http.post("/v1/batch", json={"batch": batch}).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.answers[status] += 1
                    if status == "200":
                        self.accepted.update(mids)
                        break
                    time.sleep(0.2)
                time.sleep(20 / self.rate)


def suspected(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ctrelay_duplicates_suspected_total")
    )


def test_redis_restarts_under_load(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", "always")
    server.start()
    relay = Relay(tmp_path, server.url, partitions=4)
    cluster = Cluster(relay, server, ["--accounts", "ACC-A:pass-a", "--latency-ms", str(LATENCY_MS)])
    ports = [free_port(), free_port()]
    rng = random.Random(13)
    try:
        relay.sandbox_port = free_port()
        relay.destinations([{"write_key": "wk-a", "account_id": "ACC-A", "passcode": "pass-a"}])
        cluster.start_sandbox()
        cluster.ingest_proc, cluster.ingest_url = relay.start_ingest()
        cluster.workers = [relay.start_worker(**WORKER_ENV, CTRELAY_METRICS_PORT=str(port)) for port in ports]
        sender = Sender(cluster.ingest_url, rate=200)
        sender.start()
        time.sleep(2)
        for _ in range(RESTARTS):
            time.sleep(rng.uniform(0.5, 2.0))
            server.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            server.start()
        time.sleep(2)
        sender.stopping.set()
        sender.join(timeout=30)

        client = redis.Redis.from_url(server.url)
        started = time.monotonic()
        while not queue_state(client, relay).empty and time.monotonic() - started < 90:
            time.sleep(0.5)
        client.close()
        exited = [proc.name for proc in cluster.workers if proc is not None and proc.process.poll() is not None]
        copies = Counter(str(item["record"]["evtData"]["mid"]) for item in cluster.records())
        counted = sum(suspected(port) for port in ports)
    finally:
        cluster.stop()
    extra = sum(n - 1 for n in copies.values())
    missing = sender.accepted - set(copies)
    print(
        f"\n{RESTARTS} Redis restarts, {LATENCY_MS:.0f} ms CleverTap latency: {len(sender.accepted)} accepted, "
        f"{len(missing)} missing, {extra} extra copies ({100 * extra / max(1, len(sender.accepted)):.2f} %), "
        f"{counted:.0f} suspected by the workers, worker exits: {exited or 'none'}; answers {dict(sender.answers)}"
    )
    assert not exited, f"workers exited by themselves: {exited}"
    assert sender.accepted
    assert not missing, f"{len(missing)} accepted messages never reached the sandbox"
    assert extra <= 0.01 * len(sender.accepted)
    assert extra <= counted, "a duplicate the workers did not count"
