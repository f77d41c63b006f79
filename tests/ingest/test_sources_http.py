"""analytics.js's short paths, the batch path of analytics.js and the mobile SDKs, and Webhooks (Actions) PUT/PATCH,
against a running ``ctrelay ingest`` and the real Redis: the same limits, codes, enrichment and dedup as the
long paths (each case checks what the stream holds)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis
from ingest_process import Ingest, queued

from ingest.tracking.auth import sign

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ONE = ("wk_one", "")
SHORT = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
ORIGIN = {"Origin": "https://shop.example.com"}


def message(kind: str) -> dict[str, Any]:
    """A message as analytics.js sends it on a single call: writeKey and _metadata in it, sentAt set."""
    extra = {"t": {"event": "Order Completed"}, "g": {"groupId": "g-1"}, "a": {"previousId": "anon-1"}}
    return {
        "userId": "u-" + uuid.uuid4().hex[:6],
        "messageId": "ajs-next-" + uuid.uuid4().hex,
        "timestamp": "2026-12-01T10:00:00.000Z",
        "sentAt": "2026-12-01T10:00:00.250Z",
        "writeKey": "wk_one",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        "context": {"library": {"name": "analytics.js", "version": "next-1.84.3"}, "page": {"path": "/"}},
        "integrations": {},
        **extra.get(kind, {}),
    }


def by_id(redis_client: redis.Redis, ingest_server: Ingest) -> dict[str, Any]:
    return {e.message["messageId"]: e for e in queued(redis_client, ingest_server.prefix)}


def test_short_single_paths_imply_the_type(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    sent = {letter: message(letter) for letter in SHORT}
    for letter, body in sent.items():
        headers = {"Content-Type": "text/plain", **ORIGIN}
        answer = http.post(f"/v1/{letter}", content=orjson.dumps(body), auth=ONE, headers=headers)
        assert (answer.status_code, answer.json()) == (200, {"success": True})
        assert answer.headers["access-control-allow-origin"] == ORIGIN["Origin"]
    found = by_id(redis_client, ingest_server)
    for letter, body in sent.items():
        envelope = found[body["messageId"]]
        assert envelope.write_key == "wk_one"
        assert envelope.message["type"] == SHORT[letter]
        assert "writeKey" not in envelope.message
        assert envelope.message["originalTimestamp"] == "2026-12-01T10:00:00.000Z"  # skew-corrected, as on /v1/track
        assert envelope.message["receivedAt"].endswith("Z")


def test_short_and_long_paths_share_limits_codes_and_dedup(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    body = message("t")
    assert http.post("/v1/t", content=orjson.dumps(body), auth=ONE).status_code == 200
    assert http.post("/v1/track", content=orjson.dumps(body), auth=ONE).status_code == 200  # a duplicate: dropped
    assert [m for m in by_id(redis_client, ingest_server) if m == body["messageId"]] == [body["messageId"]]
    huge = message("t") | {"properties": {"blob": "x" * 40_000}}
    answer = http.post("/v1/t", content=orjson.dumps(huge), auth=ONE, headers=ORIGIN)
    assert (answer.status_code, answer.json()["code"]) == (400, "message_too_large")
    assert answer.headers["access-control-allow-origin"] == ORIGIN["Origin"]
    no_event = {k: v for k, v in message("t").items() if k != "event"}
    assert http.post("/v1/t", content=orjson.dumps(no_event), auth=ONE).json()["code"] == "invalid_message"
    wrong = http.post("/v1/i", content=orjson.dumps(message("i")), auth=("wk_two", ""))
    assert (wrong.status_code, wrong.json()["code"]) == (401, "conflicting_write_keys")


def test_batch_path_of_analytics_js_and_mobile(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    items = [{"type": SHORT[k], **message(k)} for k in ("i", "t")]
    for item in items:
        del item["writeKey"], item["sentAt"]
    body = {"batch": [*items, {"type": "track", "userId": "u"}], "sentAt": "2026-12-01T10:00:01.000Z"}
    answer = http.post("/v1/b", content=orjson.dumps(body), auth=ONE, headers={"Content-Type": "text/plain"})
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    found = by_id(redis_client, ingest_server)
    assert [found[i["messageId"]].message["type"] for i in items] == ["identify", "track"]
    assert found[items[0]["messageId"]].message["sentAt"] == "2026-12-01T10:00:01.000Z"
    too_many = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2501, "writeKey": "wk_one"}
    assert http.post("/v1/b", content=orjson.dumps(too_many)).json()["code"] == "too_many_messages"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_webhooks_actions_put_and_patch(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest, method: str
) -> None:
    forwarded = [{"type": "track", **message("t")}, {"type": "identify", **message("i")}]
    content = orjson.dumps(forwarded)
    wrong = http.request(method, "/v1/webhook?writeKey=wk_hook", content=content, headers={"X-Signature": "00"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_signature")
    signed = {"X-Signature": sign("hook-secret", content)}
    answer = http.request(method, "/v1/webhook?writeKey=wk_hook", content=content, headers=signed)
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    found = by_id(redis_client, ingest_server)
    for item in forwarded:
        envelope = found[item["messageId"]]
        assert envelope.write_key == "wk_hook"
        assert envelope.message["timestamp"] == item["timestamp"]  # webhooks: no skew correction
