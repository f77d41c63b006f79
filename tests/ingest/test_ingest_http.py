"""The Tracking API over HTTP against a running ``ctrelay ingest`` and the real Redis.

Bad input: each case gets its status and a body with ``code`` and ``message``, enqueues nothing,
and the server keeps serving. Batches drop bad items only; duplicates are dropped per write key.
"""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from ingest_process import Ingest, queued, running_ingest

from ingest.tracking.auth import sign

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ONE = ("wk_one", "")


def track(**extra: Any) -> dict[str, Any]:
    return {"userId": "u-" + uuid.uuid4().hex[:6], "event": "Signed Up", "messageId": uuid.uuid4().hex} | extra


def ids(redis_client: redis.Redis, ingest_server: Ingest) -> list[str]:
    return [envelope.message["messageId"] for envelope in queued(redis_client, ingest_server.prefix)]


def test_single_call_is_queued_with_its_envelope(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    message = track(properties={"plan": "pro"}, extra={"kept": True})
    response = http.post("/v1/track", content=orjson.dumps(message), auth=ONE, headers={"Content-Type": "text/plain"})
    assert (response.status_code, response.json()) == (200, {"success": True})
    [envelope] = [
        e for e in queued(redis_client, ingest_server.prefix) if e.message["messageId"] == message["messageId"]
    ]
    assert envelope.write_key == "wk_one"
    assert envelope.message["type"] == "track"
    assert envelope.message["extra"] == {"kept": True}
    assert envelope.message["receivedAt"].endswith("Z")
    assert envelope.message["timestamp"] == envelope.message["receivedAt"]  # no timestamp given


def test_batch_accepts_good_items_and_drops_bad_ones(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    good = [{"type": "identify", "userId": 42, "messageId": uuid.uuid4().hex}, {"type": "track", **track()}]
    bad = [{"type": "track", "userId": "u"}, {"type": "identify"}, "text", {"type": "alias", "userId": "u"}]
    huge = {"type": "track", **track(properties={"blob": "x" * 40_000})}
    body = {"batch": [*good, *bad, huge], "writeKey": "wk_two", "context": {"library": {"name": "curl"}}}
    response = http.post("/v1/import", content=orjson.dumps(body))
    assert (response.status_code, response.json()) == (200, {"success": True})
    envelopes = {e.message["messageId"]: e for e in queued(redis_client, ingest_server.prefix)}
    assert all(envelopes[m["messageId"]].write_key == "wk_two" for m in good)
    assert envelopes[good[0]["messageId"]].message["userId"] == "42"
    assert envelopes[good[1]["messageId"]].message["context"] == {"library": {"name": "curl"}}
    assert huge["messageId"] not in envelopes
    metrics = http.get("/metrics").text
    assert 'ctrelay_ingest_messages_rejected_total{reason="invalid_message"} 4.0' in metrics
    assert 'ctrelay_ingest_messages_rejected_total{reason="message_too_large"} 1.0' in metrics


def test_duplicates_are_dropped_per_write_key(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    message = track()
    for key in ("wk_one", "wk_one", "wk_two"):
        assert http.post("/v1/track", content=orjson.dumps(message), auth=(key, "")).status_code == 200
    twice = {"batch": [{"type": "track", **message}] * 2}
    assert http.post("/v1/batch", content=orjson.dumps(twice), auth=ONE).status_code == 200
    found = [
        e.write_key
        for e in queued(redis_client, ingest_server.prefix)
        if e.message["messageId"] == message["messageId"]
    ]
    assert sorted(found) == ["wk_one", "wk_two"]
    assert 'ctrelay_ingest_duplicates_total{destination="ACC-ONE"} 3.0' in http.get("/metrics").text


def test_a_full_batch_of_2500_is_accepted(http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest) -> None:
    batch = [{"type": "track", "userId": f"u{i}", "event": "E", "messageId": uuid.uuid4().hex} for i in range(2500)]
    before = len(queued(redis_client, ingest_server.prefix))
    assert http.post("/v1/batch", json={"batch": batch}, auth=ONE).status_code == 200
    assert len(queued(redis_client, ingest_server.prefix)) == before + 2500


def test_out_of_range_timestamps_are_not_errors(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    message = track(timestamp="0001-01-01T00:00:00+01:00", sentAt="9999-12-31T23:59:59Z")
    assert http.post("/v1/track", json=message, auth=ONE).status_code == 200
    [envelope] = [
        e for e in queued(redis_client, ingest_server.prefix) if e.message["messageId"] == message["messageId"]
    ]
    assert envelope.message["timestamp"] == envelope.message["receivedAt"]


def test_gzip_body(http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest) -> None:
    message = {"type": "page", **track(name="Home")}
    content = gzip.compress(orjson.dumps({"batch": [message]}))
    response = http.post("/v1/batch", content=content, auth=ONE, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert message["messageId"] in ids(redis_client, ingest_server)


def test_trailing_slash_is_served_not_redirected(http: httpx.Client) -> None:
    assert http.post("/v1/track/", content=orjson.dumps(track()), auth=ONE).status_code == 200


def oversize_batch() -> bytes:
    return orjson.dumps({"batch": [{"type": "track", **track(properties={"p": "x" * 1000})} for _ in range(600)]})


BAD_INPUT: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("invalid JSON", "/v1/track", {"content": b'{"userId": "u", '}, 400, "invalid_json"),
    ("empty body", "/v1/batch", {"content": b""}, 400, "invalid_json"),
    ("single call is an array", "/v1/track", {"content": b"[]"}, 400, "invalid_body"),
    ("batch is not an array", "/v1/batch", {"content": b'{"batch": {"type": "track"}}'}, 400, "invalid_body"),
    ("context of wrong type", "/v1/track", {"json": track(context="x")}, 400, "invalid_message"),
    ("writeKey of wrong type", "/v1/batch", {"json": {"batch": [], "writeKey": 5}}, 400, "invalid_body"),
    ("missing ids", "/v1/identify", {"json": {"traits": {"a": 1}}}, 400, "invalid_message"),
    ("track without event", "/v1/track", {"json": {"userId": "u"}}, 400, "invalid_message"),
    ("alias without previousId", "/v1/alias", {"json": {"userId": "u"}}, 400, "invalid_message"),
    ("oversize message", "/v1/track", {"json": track(properties={"p": "x" * 33_000})}, 400, "message_too_large"),
    ("oversize batch", "/v1/batch", {"content": oversize_batch()}, 400, "body_too_large"),
    ("2,501 items", "/v1/batch", {"json": {"batch": [{"type": "track", **track()}] * 2501}}, 400, "too_many_messages"),
    (
        "gzip bomb",
        "/v1/batch",
        {"content": gzip.compress(b" " * 200_000_000), "headers": {"Content-Encoding": "gzip"}},
        400,
        "body_too_large",
    ),
    (
        "unknown encoding",
        "/v1/track",
        {"json": track(), "headers": {"Content-Encoding": "br"}},
        400,
        "unsupported_encoding",
    ),
    ("unknown path", "/v1/nothing", {"json": track()}, 404, "not_found"),
    ("unknown write key", "/v1/track", {"json": track(), "auth": ("wk_nobody", "")}, 401, "unknown_write_key"),
    ("no write key", "/v1/track", {"json": track(), "auth": None}, 401, "missing_write_key"),
    ("conflicting keys", "/v1/track", {"json": track(writeKey="wk_two")}, 401, "conflicting_write_keys"),
    (
        "conflicting keys in a batch",
        "/v1/batch",
        {"json": {"batch": [{"type": "track", **track(writeKey="wk_two")}], "writeKey": "wk_one"}, "auth": None},
        401,
        "conflicting_write_keys",
    ),
    ("GET on a POST path", "/v1/track", {"method": "GET"}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input(http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest, case: tuple[Any, ...]) -> None:
    _, path, request_kw, status, code = case
    before = len(queued(redis_client, ingest_server.prefix))
    kw = {"auth": ONE} | request_kw
    method = kw.pop("method", "POST")
    response = http.request(method, path, **kw)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["code"] == code
    assert isinstance(answer["message"], str)
    assert answer["message"]
    assert len(queued(redis_client, ingest_server.prefix)) == before
    assert http.get("/healthz").status_code == 200


def test_webhook_signature(http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest) -> None:
    forwarded = {"type": "track", **track(writeKey="segment-source-key"), "timestamp": "2026-11-28T10:00:00.000Z"}
    content = orjson.dumps(forwarded)
    wrong = http.post("/v1/webhook?writeKey=wk_hook", content=content, headers={"X-Signature": sign("nope", content)})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_signature")
    missing = http.post("/v1/webhook?writeKey=wk_hook", content=content)
    assert (missing.status_code, missing.json()["code"]) == (401, "missing_signature")
    assert forwarded["messageId"] not in ids(redis_client, ingest_server)

    right = http.post(
        "/v1/webhook?writeKey=wk_hook", content=content, headers={"X-Signature": sign("hook-secret", content)}
    )
    assert (right.status_code, right.json()) == (200, {"success": True})
    [envelope] = [
        e for e in queued(redis_client, ingest_server.prefix) if e.message["messageId"] == forwarded["messageId"]
    ]
    assert envelope.write_key == "wk_hook"
    assert envelope.message["timestamp"] == "2026-11-28T10:00:00.000Z"  # no skew correction for webhooks
    assert "writeKey" not in envelope.message


def test_webhook_array_with_basic_auth_and_no_secret(
    http: httpx.Client, redis_client: redis.Redis, ingest_server: Ingest
) -> None:
    messages = [{"type": "identify", **track()}, {"type": "bogus", "userId": "u"}]
    response = http.post("/v1/webhook", content=orjson.dumps(messages), auth=ONE)
    assert response.status_code == 200
    assert messages[0]["messageId"] in ids(redis_client, ingest_server)


def test_a_lone_invalid_webhook_message_is_refused(http: httpx.Client) -> None:
    response = http.post("/v1/webhook", json={"type": "track", "userId": "u"}, auth=ONE)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_message")


def test_health_readiness_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    document = http.get("/openapi.json").json()
    batch = document["paths"]["/v1/batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Batch"}
    assert set(batch["responses"]) >= {"200", "400", "401", "503"}
    assert "Track" in document["components"]["schemas"]
    assert "/v1/webhook" in document["paths"]


def test_metrics(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    for name in (
        "ctrelay_ingest_messages_accepted_total",
        "ctrelay_ingest_messages_rejected_total",
        "ctrelay_ingest_duplicates_total",
        "ctrelay_ingest_request_duration_seconds_bucket",
        "ctrelay_queue_length",
    ):
        assert name in text


def test_logs_hold_no_secrets_or_bodies(http: httpx.Client, ingest_server: Ingest) -> None:
    secret_value = "do-not-log-" + uuid.uuid4().hex
    http.post("/v1/track", json=track(properties={"s": secret_value}), auth=("wk_nobody", ""))
    http.post("/v1/track", json=track(properties={"s": secret_value}, context=5), auth=ONE)
    http.post("/v1/batch", json={"batch": [{"type": "track", "userId": "u", "p": secret_value}]}, auth=ONE)
    text = ingest_server.log.read_text()
    assert "request refused" in text
    for secret in (secret_value, "pass-one", "hook-secret"):
        assert secret not in text


def test_metrics_sum_over_worker_processes(
    redis_url: str, prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with running_ingest(redis_url, prefix, tmp_path, workers=2) as ingest, ingest.client(auth=ONE) as http:
        for _ in range(3):  # fresh connections, so that both processes are likely to answer some
            with ingest.client(auth=ONE) as one:
                assert one.post(
                    "/v1/batch", json={"batch": [{"type": "track", **track()} for _ in range(4)]}
                ).is_success
        text = http.get("/metrics").text
    assert 'ctrelay_ingest_messages_accepted_total{destination="ACC-ONE",type="track"} 12.0' in text
    assert len(queued(redis_client, prefix)) == 12
