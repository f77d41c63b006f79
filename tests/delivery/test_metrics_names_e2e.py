"""After a mixed workload through real processes (ingest, a worker, the sandbox): accepted, refused, duplicate and
webhook messages, deliveries, a destination paused by a wrong passcode, the unauthenticated /metrics
of ingest and of the worker name destinations by their names and contain no write key."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from delivery_e2e import Relay, wait_for

from ingest.tracking.auth import sign
from worker.cli.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

WEB, APP, BAD = "wk_web_7f3a91c2", "wk_app_0d5e44b8", "wk_bad_93c1aa07"
SECRET = "hook-secret-e2e"


def tracks(count: int, user: str) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Clicked", "userId": user, "messageId": uuid.uuid4().hex} for _ in range(count)]


def test_public_metrics_carry_names_never_write_keys(relay: Relay) -> None:
    relay.start_sandbox("--accounts", "ACC-A:pass-a,ACC-B:pass-b")
    relay.destinations(
        [
            {
                "write_key": WEB,
                "account_id": "ACC-A",
                "passcode": "pass-a",
                "name": "shop-web",
                "webhook_secret": SECRET,
            },
            {"write_key": APP, "account_id": "ACC-B", "passcode": "pass-b"},
            {"write_key": BAD, "account_id": "ACC-A", "passcode": "wrong"},  # named ACC-A: shop-web has its own name
        ]
    )
    _, url = relay.start_ingest()
    metrics_port = free_port()
    worker = relay.start_worker(CTRELAY_METRICS_PORT=str(metrics_port), CTRELAY_AUTH_PAUSE_S="30")

    for key in (WEB, APP, BAD):
        batch = [*tracks(10, f"u-{key}"), {"type": "track", "event": "No User"}]  # one invalid item
        body = {"batch": batch, "writeKey": key}
        for _ in range(2):  # the second time, all duplicates
            assert httpx.post(f"{url}/v1/batch", json=body, timeout=10).status_code == 200
        assert httpx.post(f"{url}/v1/track", json={"event": "x"}, auth=(key, ""), timeout=10).status_code == 400
    hook = orjson.dumps({"type": "identify", "userId": "hooked", "traits": {"Phone": "not a phone"}})
    answer = httpx.post(
        f"{url}/v1/webhook", params={"writeKey": WEB}, content=hook, headers={"X-Signature": sign(SECRET, hook)}
    )
    assert answer.status_code == 200
    assert (
        httpx.post(f"{url}/v1/track", json={"userId": "u", "event": "x"}, auth=("wk_unknown_1", "")).status_code == 401
    )

    def worker_metrics() -> str:
        return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text

    def settled() -> bool:
        try:
            text = worker_metrics()
        except httpx.HTTPError:
            return False
        delivered = sum(1 for item in relay.records() if item["record"].get("type") == "event")
        return delivered >= 20 and 'ctrelay_destination_paused{destination="ACC-A"} 1.0' in text

    wait_for(settled, 90, "both good destinations delivered, the bad one paused", worker)
    ingest_text = httpx.get(f"{url}/metrics", timeout=5).text
    worker_text = worker_metrics()
    for text in (ingest_text, worker_text):
        for key in (WEB, APP, BAD, "wk_unknown_1"):
            assert key not in text
    assert 'destination="shop-web"' in ingest_text
    assert 'destination="ACC-B"' in ingest_text
    assert 'destination="shop-web"' in worker_text
    assert 'destination="ACC-B"' in worker_text
    assert 'ctrelay_destination_paused{destination="ACC-A"} 1.0' in worker_text
