"""Redis at ``maxmemory`` (noeviction): ingest answers 503, delivery goes on and frees memory, ingest takes
traffic again by itself, nothing is lost.

A ``redis-server`` of the test's own with a small ``maxmemory``; a real ``ctrelay ingest`` process fills it
(the backlog cap off, so that Redis itself is full); the worker's runtime (its Celery app, whose broker is
that Redis and refuses new tasks) ticks with a fake CleverTap until the queue is empty.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from chaos_cluster import RedisServer
from delivery_fakes import FakeCleverTap
from ingest_process import DESTINATIONS, running_ingest

from worker.core.keys import Keys
from worker.core.settings import Settings, load
from worker.delivery.app import create_app
from worker.delivery.clevertap import CleverTap
from worker.store.streams import ensure_groups, measure_backlog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not any(Path(p, "redis-server").exists() for p in os.get_exec_path()), reason="no redis-server"),
]
PARTITIONS = 4


def batch(n: int) -> tuple[list[str], dict[str, object]]:
    mids = [uuid.uuid4().hex for _ in range(n)]
    events = [
        {
            "type": "track",
            "event": "Clicked",
            "userId": f"u{i % 50}",
            "messageId": mid,
            "properties": {"mid": mid, "pad": "x" * 300},
        }
        for i, mid in enumerate(mids)
    ]
    return mids, {"batch": events}


def test_a_full_redis_answers_503_delivers_frees_memory_and_takes_traffic_again(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", "everysec", ["--maxmemory", "6mb"])
    server.start()
    prefix = "full"
    env = {"CTRELAY_PARTITIONS": str(PARTITIONS), "CTRELAY_BACKLOG_CAP": "0", "CTRELAY_BACKLOG_INTERVAL": "0.2"}
    client = redis.Redis.from_url(server.url)
    ensure_groups(client, Keys(prefix), PARTITIONS)  # the workers were there before Redis filled up
    accepted: list[str] = []
    try:
        with running_ingest(server.url, prefix, tmp_path, env) as ingest, ingest.client(auth=("wk_one", "")) as http:
            answers: dict[int, int] = {}
            while 503 not in answers:
                mids, body = batch(100)
                status = http.post("/v1/batch", json=body).status_code
                answers[status] = answers.get(status, 0) + 1
                if status == 200:
                    accepted += mids
                assert len(accepted) < 200_000, "Redis never filled up"
            assert client.info("memory")["used_memory"] >= 6 * 1024 * 1024 * 0.9
            full_backlog = sum(part.total for part in measure_backlog(client, Keys(prefix), PARTITIONS))
            assert full_backlog == len(accepted)

            (tmp_path / "destinations.toml").write_text(DESTINATIONS)
            settings = Settings(
                redis_url=server.url,
                redis_prefix=prefix,
                partitions=PARTITIONS,
                destinations=tmp_path / "destinations.toml",
                lease_ttl_s=5,
                drain_budget_s=2,
            )
            _, runtime_of = create_app(load(settings))
            runtime = runtime_of()
            fake = FakeCleverTap()
            fake_http = httpx.Client(transport=httpx.MockTransport(fake.handler))
            runtime.deliverer.uploader.clevertap = CleverTap(fake_http, 5.0)
            started = time.monotonic()
            while sum(part.total for part in measure_backlog(client, Keys(prefix), PARTITIONS)):
                runtime.tick()  # the broker refuses the drains: the ticker drains itself
                assert time.monotonic() - started < 120, "the full queue did not drain"
            drained_s = time.monotonic() - started
            runtime.close()
            fake_http.close()

            late: list[str] = []
            for _ in range(100):  # ingest takes traffic again by itself (its next write fits)
                mids, body = batch(10)
                if http.post("/v1/batch", json=body).status_code == 200:
                    late = mids
                    break
                time.sleep(0.1)
            assert late, "ingest did not answer 200 again after the queue drained"
        delivered = {record["evtData"]["mid"] for _, record in fake.received}
        print(f"\n{len(accepted)} accepted until Redis was full; drained in {drained_s:.1f} s; ingest 200 again")
        assert set(accepted) <= delivered  # nothing accepted is lost
        assert len(fake.received) == len(accepted)  # and nothing was sent twice
    finally:
        client.close()
        server.stop()
