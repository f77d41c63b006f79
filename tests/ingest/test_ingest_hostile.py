"""Hostile input to the Tracking API (the app in-process, the real Redis): nesting past the bound, bodies that cannot
be re-encoded or merged, bad signatures, conflicting write keys, replayed webhooks, forged deletion marks, client
``Delete User`` tracks with and without ``allow_delete_events``. None is a 5xx; a batch loses only its bad items."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from ingest_process import queued

from ingest import metrics
from ingest.app import create_app
from ingest.tracking.auth import sign
from worker.core.destinations import Destination, Destinations
from worker.core.keys import Keys
from worker.core.settings import Config, Settings
from worker.ops.users import suppressed

pytestmark = pytest.mark.integration

PUBLIC = Destination(write_key="wk_public", account_id="ACC-PUBLIC", passcode="p1")
TRUSTED = Destination(write_key="wk_trusted", account_id="ACC-TRUSTED", passcode="p2", allow_delete_events=True)
HOOK = Destination(write_key="wk_hook", account_id="ACC-HOOK", passcode="p3", webhook_secret="s3cret")


class Client:
    """Requests to one in-process ingest app (one event loop per request)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        settings = Settings(REDIS_URL=redis_url, redis_prefix=prefix, partitions=2)
        self.app = create_app(Config(settings=settings, destinations=Destinations([PUBLIC, TRUSTED, HOOK])))

    def post(self, path: str, body: Any, write_key: str | None = "wk_public", **kw: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else encode(body)

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as http:
                auth = (write_key, "") if write_key else None
                answer = await http.post(path, content=content, auth=auth, **kw)
            await self.app.state.ingest.client.aclose()
            return answer

        return asyncio.run(send())


@pytest.fixture
def client(redis_url: str, prefix: str, redis_client: redis.Redis) -> Client:
    return Client(redis_url, prefix)


def nested(depth: int) -> str:
    """A placeholder for an object ``depth`` levels deep, which :func:`encode` writes out (orjson itself cannot)."""
    return f"@deep:{depth}@"


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def encode(body: Any) -> bytes:
    return re.sub(rb'"@deep:(\d+)@"', lambda m: deep_json(int(m.group(1))), orjson.dumps(body))


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Clicked", "userId": f"u{n}", "messageId": f"m{n}"} | extra


def stored(redis_client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    return {e.message["messageId"]: e.message for e in queued(redis_client, prefix, partitions=2)}


def rejected(reason: str) -> float:
    value = metrics.rejected.labels(reason)._value.get()  # prometheus-client has no public getter
    assert isinstance(value, float)
    return value


def test_single_calls_past_the_bound_are_400_too_deep(client: Client) -> None:
    for depth in (63, 64, 65, 200, 253, 254, 255, 500, 1000, 1022, 1023, 1024, 2000):
        raw = b'{"userId": "u1", "event": "Deep", "properties": ' + deep_json(depth) + b"}"
        answer = client.post("/v1/track", raw)
        fits = depth + 1 <= 64  # the message is level 1, properties level 2
        assert answer.status_code == (200 if fits else 400), (depth, answer.text)
        if not fits:
            assert answer.json()["code"] in ("too_deep", "invalid_json"), depth  # orjson parses 1,024 levels at most
            assert answer.json()["message"]


def test_a_deep_item_is_that_items_rejection_only(client: Client, redis_client: redis.Redis, prefix: str) -> None:
    before = rejected("too_deep")
    batch = [track(1), track(2, properties=nested(300)), track(3, context=nested(80)), track(4), track(5, x=[[[1]]])]
    answer = client.post("/v1/batch", {"batch": batch})
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    assert sorted(stored(redis_client, prefix)) == ["m1", "m4", "m5"]
    assert rejected("too_deep") - before == 2


def test_a_deep_batch_context_merged_into_deep_items_never_recurses(
    client: Client, redis_client: redis.Redis, prefix: str
) -> None:
    deep = client.post("/v1/batch", {"batch": [track(1, context=nested(900))], "context": nested(900)})
    assert deep.status_code == 400
    assert deep.json()["code"] == "too_deep"
    fits = {"batch": [track(2, context=nested(62)), track(3, context=nested(300))], "context": nested(62)}
    answer = client.post("/v1/batch", fits)
    assert answer.status_code == 200
    assert list(stored(redis_client, prefix)) == ["m2"]


def test_webhook_signatures_are_bytes_and_anything_else_is_401(client: Client) -> None:
    body = orjson.dumps({"type": "track", "event": "Hooked", "userId": "u1", "messageId": "h1"})
    good = sign("s3cret", body)
    for signature in ("é" * 40, "\u00ff" * 40, "zz" * 20, good[:-1], good + "0", "", " ", good.upper() + "é", "0" * 40):
        headers = {"X-Signature": signature.encode("utf-8")}  # raw bytes on the wire
        answer = client.post("/v1/webhook?writeKey=wk_hook", body, write_key=None, headers=headers)
        assert answer.status_code == 401, (signature, answer.text)
        assert answer.json()["code"] in ("invalid_signature", "missing_signature")
    ok = client.post("/v1/webhook?writeKey=wk_hook", body, write_key=None, headers={"X-Signature": good.upper()})
    assert ok.status_code == 200


def test_conflicting_query_write_keys_are_401(client: Client) -> None:
    body = {"type": "track", "event": "Hooked", "userId": "u1"}
    answer = client.post("/v1/webhook?writeKey=wk_public&writeKey=wk_trusted", body, write_key=None)
    assert (answer.status_code, answer.json()["code"]) == (401, "conflicting_write_keys")
    same = client.post("/v1/webhook?writeKey=wk_public&writeKey=wk_public", body, write_key=None)
    assert same.status_code == 200


def test_a_replayed_webhook_without_message_id_is_a_duplicate(
    client: Client, redis_client: redis.Redis, prefix: str
) -> None:
    body = orjson.dumps([{"type": "track", "event": "Hooked", "userId": "u1"}, {"type": "identify", "userId": "u2"}])
    headers = {"X-Signature": sign("s3cret", body)}
    for _ in range(3):
        assert client.post("/v1/webhook?writeKey=wk_hook", body, write_key=None, headers=headers).status_code == 200
    found = stored(redis_client, prefix)
    assert len(found) == 2  # the replays were dropped as duplicates
    assert all(key.startswith("webhook-") and len(key) <= 100 for key in found)
    other = orjson.dumps([{"type": "track", "event": "Hooked", "userId": "u1", "n": 2}])
    client.post("/v1/webhook?writeKey=wk_hook", other, write_key=None, headers={"X-Signature": sign("s3cret", other)})
    assert len(stored(redis_client, prefix)) == 3  # another body: another message


def test_a_client_delete_user_is_an_ordinary_event_unless_allowed(
    client: Client, redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    deletion = {"type": "track", "event": "Delete User", "userId": "victim", "messageId": "d1"}
    assert client.post("/v1/batch", {"batch": [deletion]}, write_key="wk_public").status_code == 200
    assert suppressed(redis_client, keys, PUBLIC, time.time()) == []  # public write key: nobody suppressed
    assert client.post("/v1/batch", {"batch": [deletion]}, write_key="wk_trusted").status_code == 200
    assert [s["id"] for s in suppressed(redis_client, keys, TRUSTED, time.time())] == ["victim"]


def test_a_forged_operator_mark_is_dropped(client: Client, redis_client: redis.Redis, prefix: str) -> None:
    """``context.ctrelay`` is the relay's own: a client's is dropped, from the item and from the batch's context."""
    mark = {"ctrelay": {"deletion": "admin"}, "ip": "1.2.3.4"}
    forged = [
        {"type": "track", "event": "Delete User", "userId": "victim", "messageId": "f1", "context": mark},
        {"type": "track", "event": "Delete User", "userId": "victim2", "messageId": "f2"},
    ]
    assert client.post("/v1/batch", {"batch": forged, "context": mark}).status_code == 200
    assert client.post("/v1/track", forged[0] | {"messageId": "f3"}).status_code == 200
    found = stored(redis_client, prefix)
    assert sorted(found) == ["f1", "f2", "f3"]
    for message in found.values():
        assert "ctrelay" not in message["context"]
        assert message["context"]["ip"] == "1.2.3.4"
    assert suppressed(redis_client, Keys(prefix), PUBLIC, time.time()) == []

    from worker.transform.records import transform

    for message in found.values():  # what the worker makes of them: an ordinary event, not a deletion
        records = transform(message, PUBLIC, time.time())
        assert isinstance(records, list)
        assert records[0]["evtName"] == "Delete User"
