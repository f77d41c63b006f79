"""The admin API (ingest/admin/) against a real Redis: token, every route, filters, never a passcode."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from admin_client import AUTH, PARTITIONS, TOKEN, AdminClient, config, message
from fastapi import FastAPI

from ingest.admin.mount import mount
from worker.core.keys import Envelope, Keys
from worker.core.settings import Config, Settings
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str, prefix: str) -> AdminClient:
    app = FastAPI()
    assert mount(app, config(redis_url, prefix, TOKEN))
    return AdminClient(app)


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    store = DeadLetterStore(redis_client, keys)
    now = time.time()
    store.put(
        [Letter.of("wk1", message(i), "rejected", code=523, error="missing identity", now=now - 3600 - i)
         for i in range(3)]
        + [Letter.of("wk2", message(10 + i, "Signed Up"), "auth_failed", status=401, now=now - 60 - i)
           for i in range(2)]
    )  # fmt: skip
    return store


def streamed(client: redis.Redis, keys: Keys) -> list[str]:
    ids = []
    for partition in range(PARTITIONS):
        ids += [Envelope.decode(f).message["messageId"] for _, f in client.xrange(keys.stream(partition))]
    return sorted(ids)


ROUTES = [
    ("GET", "/admin/deadletters", None),
    ("GET", "/admin/deadletters/stats", None),
    ("GET", "/admin/deadletters/export", None),
    ("GET", "/admin/deadletters/abc", None),
    ("DELETE", "/admin/deadletters/abc", None),
    ("POST", "/admin/deadletters/replay", {"all": True}),
    ("POST", "/admin/deadletters/purge", {"all": True}),
    ("POST", "/admin/deadletters/import", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_refuses_without_or_with_a_wrong_token(
    client: AdminClient, store: DeadLetterStore, method: str, path: str, body: Any
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
    assert store.count() == 5  # nothing happened


def test_off_when_no_token_is_configured(redis_url: str, prefix: str) -> None:
    for token in (None, ""):
        app = FastAPI()
        assert not mount(app, config(redis_url, prefix, token))
        response = AdminClient(app).get("/admin/deadletters/stats", headers=AUTH)
        assert response.status_code == 404


def test_stats_and_filters(client: AdminClient, store: DeadLetterStore) -> None:
    data = client.get("/admin/deadletters/stats", headers=AUTH).json()
    assert data["total"] == 5
    assert data["by_reason"] == {"rejected": 3, "auth_failed": 2}
    assert client.get("/admin/deadletters/stats?destination=wk2", headers=AUTH).json()["total"] == 2
    assert client.get("/admin/deadletters/stats?since=10m", headers=AUTH).json()["total"] == 2
    bad = client.get("/admin/deadletters/stats?reason=nope", headers=AUTH)
    assert bad.status_code == 400
    assert "reason 'nope'" in bad.text


def test_list_and_show(client: AdminClient, store: DeadLetterStore) -> None:
    listed = client.get("/admin/deadletters", headers=AUTH).json()
    assert listed["count"] == 5
    assert [x["message"]["messageId"] for x in listed["letters"]] == ["m10", "m11", "m0", "m1", "m2"]
    filtered = client.get("/admin/deadletters?code=523&limit=2", headers=AUTH).json()
    assert [x["message"]["messageId"] for x in filtered["letters"]] == ["m0", "m1"]
    assert client.get("/admin/deadletters?event=Signed%20Up&type=track", headers=AUTH).json()["count"] == 2
    letter = listed["letters"][0]
    shown = client.get(f"/admin/deadletters/{letter['id']}", headers=AUTH)
    assert shown.status_code == 200
    assert shown.json()["letter"] == letter
    assert shown.json()["transform"]["records"][0]["evtName"] == "Signed Up"
    assert "top-secret" not in shown.text
    assert "top-secret" not in client.get("/admin/deadletters", headers=AUTH).text
    assert client.get("/admin/deadletters/nope", headers=AUTH).status_code == 404


def test_replay_dry_run_then_for_real(
    client: AdminClient, store: DeadLetterStore, redis_client: redis.Redis, keys: Keys
) -> None:
    assert client.post("/admin/deadletters/replay", json={}, headers=AUTH).status_code == 400
    dry = client.post(
        "/admin/deadletters/replay", json={"all": True, "reason": "auth_failed", "dry_run": True}, headers=AUTH
    )
    assert dry.status_code == 200
    assert dry.json()["replayed"] == 0
    assert [p["records"][0]["evtName"] for p in dry.json()["would_send"]] == ["Signed Up", "Signed Up"]
    assert "top-secret" not in dry.text
    assert store.count() == 5
    one = next(store.scan()).id
    assert (
        client.post("/admin/deadletters/replay", json={"ids": [one], "rate": 0}, headers=AUTH).json()["replayed"] == 1
    )
    done = client.post("/admin/deadletters/replay", json={"all": True, "rate": 1000}, headers=AUTH).json()
    assert done == {"replayed": 4, "kept": {}, "dry_run": False}
    assert streamed(redis_client, keys) == ["m0", "m1", "m10", "m11", "m2"]
    assert store.count() == 0


def test_purge_and_delete(client: AdminClient, store: DeadLetterStore) -> None:
    assert client.post("/admin/deadletters/purge", json={"reason": "rejected"}, headers=AUTH).status_code == 400
    assert client.post("/admin/deadletters/purge", json={"all": True, "reason": "rejected"}, headers=AUTH).json() == {
        "deleted": 3
    }
    one = next(store.scan()).id
    assert client.delete(f"/admin/deadletters/{one}", headers=AUTH).json() == {"deleted": 1}
    assert client.delete(f"/admin/deadletters/{one}", headers=AUTH).status_code == 404
    assert store.count() == 1


def test_export_and_import(client: AdminClient, store: DeadLetterStore) -> None:
    exported = client.get("/admin/deadletters/export?reason=rejected", headers=AUTH)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = exported.content.splitlines()
    assert [orjson.loads(line)["message"]["messageId"] for line in lines] == ["m2", "m1", "m0"]
    before = {letter.id: letter for letter in store.scan()}
    client.post("/admin/deadletters/purge", json={"all": True}, headers=AUTH)
    body = b"\n".join(lines) + b"\nnot json\n"
    result = client.post("/admin/deadletters/import", content=body, headers=AUTH).json()
    assert result["imported"] == 3
    assert result["errors"][0].startswith("line 4:")
    assert {letter.id: letter for letter in store.scan()} == {k: v for k, v in before.items() if v.reason == "rejected"}


def test_mounted_on_the_ingest_app_only_with_a_token(store: DeadLetterStore, redis_url: str, prefix: str) -> None:
    ingest_app = pytest.importorskip("ingest.app")
    on = AdminClient(ingest_app.create_app(config(redis_url, prefix, TOKEN)))
    assert on.get("/admin/deadletters/stats", headers=AUTH).json()["total"] == 5
    refused = on.get("/admin/deadletters/stats")
    assert refused.status_code == 401
    assert refused.json()["code"]  # ingest's error shape: code and message
    assert on.get("/admin/deadletters/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
    off = AdminClient(ingest_app.create_app(config(redis_url, prefix, None)))
    assert off.get("/admin/deadletters/stats", headers=AUTH).status_code == 404
    assert off.post("/admin/deadletters/purge", json={"all": True}, headers=AUTH).status_code == 404
    assert store.count() == 5


def test_retention_applies_before_an_answer(redis_url: str, prefix: str, store: DeadLetterStore) -> None:
    app = FastAPI()
    settings = config(redis_url, prefix, TOKEN)
    short = Config(
        settings=settings.settings.model_copy(update={"deadletter_retention": 1800}), destinations=settings.destinations
    )
    assert mount(app, short)
    client = AdminClient(app)
    assert client.get("/admin/deadletters/stats").status_code == 401
    assert store.count() == 5  # a refused request changes nothing
    assert client.get("/admin/deadletters/stats", headers=AUTH).json()["by_reason"] == {"auth_failed": 2}
    assert store.count() == 2


def test_redis_down_is_a_503_with_retry_after(prefix: str) -> None:
    """An admin request Redis cannot answer is the server's temporary fault (503), not a crash (500)."""
    from worker.cli.embedded import free_port

    app = FastAPI()
    assert mount(app, config(f"redis://127.0.0.1:{free_port()}/0", prefix, TOKEN))
    admin = AdminClient(app)
    for method, path, body in (
        ("GET", "/admin/deadletters/stats", None),
        ("POST", "/admin/deadletters/purge", {"all": True}),
        ("POST", "/admin/users/delete", {"destination": "wk1", "user_id": "u1"}),
    ):
        response = admin.request(method, path, json=body, headers=AUTH)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["code"] == "queue_unavailable"
        assert response.headers["retry-after"] == str(Settings().retry_after)
    app.state.admin_redis.close()


def test_import_body_is_bounded(client: AdminClient, store: DeadLetterStore, redis_url: str, prefix: str) -> None:
    """An import body past CTRELAY_MAX_IMPORT_BYTES is refused with a 400 (code, message); nothing is imported."""
    exported = client.get("/admin/deadletters/export", headers=AUTH).content
    limit = len(exported)
    settings = Settings(
        REDIS_URL=redis_url, redis_prefix=prefix, partitions=PARTITIONS, admin_token=TOKEN, max_import_bytes=limit
    )
    bounded = FastAPI()
    assert mount(bounded, Config(settings=settings, destinations=config(redis_url, prefix, TOKEN).destinations))
    client = AdminClient(bounded)
    client.post("/admin/deadletters/purge", json={"all": True}, headers=AUTH)
    refused = client.post("/admin/deadletters/import", content=exported + b"\n", headers=AUTH)
    assert refused.status_code == 400
    assert refused.json()["code"] == "body_too_large"
    assert str(len(exported)) in refused.json()["message"]
    assert store.count() == 0
    assert client.post("/admin/deadletters/import", content=exported, headers=AUTH).json()["imported"] == 5
    assert store.count() == 5
