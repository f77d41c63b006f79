"""User deletion: the transform's Delete value, CleverTap's delete call, and (real Redis) the worker's path:
each way in, suppression (queued, retried, new messages), expiry, unsuppress, a failing delete call
(retried, dead-lettered with its reason, replayed)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis
from admin_client import AUTH, AdminClient, config
from delivery_fakes import Clock, FakeCleverTap, build, enqueue, track

from worker.core.destinations import Destination
from worker.core.keys import Keys
from worker.delivery.clevertap import DELETE_PATH, CleverTap
from worker.delivery.drain import Drainer
from worker.delivery.policy import RetryPolicy
from worker.delivery.uploads import delete_chunks
from worker.ops import deadletters as dlq
from worker.ops.users import delete_user, suppressed, unsuppress
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import make_filter
from worker.transform.deletions import Delete, deletion_of
from worker.transform.records import transform

WK = "wk1"
DEST = Destination(write_key=WK, account_id="ACC-1", passcode="secret", allow_delete_events=True)
NOW = 1_800_000_000.0


# -- pure ---------------------------------------------------------------------------------------------------


def test_transform_returns_a_deletion_for_the_delete_event() -> None:
    both = {"type": "track", "event": "Delete User", "userId": "u1", "anonymousId": "a1"}
    assert transform(both, DEST, NOW) == Delete("u1", "a1")
    assert transform({**both, "userId": None}, DEST, NOW) == Delete(None, "a1")
    off = DEST.model_copy(update={"send_anonymous_id_as_object_id": False})
    assert transform({**both, "userId": None}, off, NOW) == Delete("a1", None)  # anonymousId is the identity then
    assert Delete("u1", None).record() == {"type": "delete", "identity": ["u1"], "guid": []}
    custom = DEST.model_copy(update={"delete_event_name": "Forget Me"})
    assert transform({**both, "event": "Forget Me"}, custom, NOW) == Delete("u1", "a1")
    normal = transform(both, custom, NOW)  # "Delete User" is an ordinary event for that destination
    assert isinstance(normal, list)
    assert normal[0]["evtName"] == "Delete User"


def test_delete_user_deletes_only_where_allowed_or_when_an_operator_queued_it() -> None:
    public = DEST.model_copy(update={"allow_delete_events": False})
    both = {"type": "track", "event": "Delete User", "userId": "u1", "anonymousId": "a1"}
    ordinary = transform(both, public, NOW)
    assert isinstance(ordinary, list)
    assert ordinary[0]["evtName"] == "Delete User"  # public write keys: an ordinary event
    assert deletion_of(both, public) is None
    for via in ("cli", "admin"):
        marked = {**both, "context": {"ctrelay": {"deletion": via}}}
        assert transform(marked, public, NOW) == Delete("u1", "a1")  # the operator's ways in, whatever the setting
        assert deletion_of(marked, public) == Delete("u1", "a1")
    assert transform({**both, "context": {"ctrelay": {"deletion": ""}}}, public, NOW) != Delete("u1", "a1")
    assert transform(both, DEST, NOW) == Delete("u1", "a1")


def test_delete_call_body_headers_and_chunks() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "processed": 2})

    clevertap = CleverTap(httpx.Client(transport=httpx.MockTransport(handler)), 5.0)
    records = [Delete("u1", "a1").record(), Delete("u1", None).record(), Delete(None, "a2").record()]
    report = clevertap.delete(DEST, records)
    assert report.status == 200
    assert report.count == 3
    assert not report.failures
    (request,) = seen
    assert request.url.path == DELETE_PATH
    assert request.headers["X-CleverTap-Account-Id"] == "ACC-1"
    assert request.headers["X-CleverTap-Passcode"] == "secret"
    assert orjson.loads(request.content) == {"identity": ["u1"], "guid": ["a1", "a2"]}

    class W:
        def __init__(self, record: dict[str, Any]) -> None:
            self.records = [record]

    items: Any = [(W(Delete(f"u{i}", f"a{i % 150}").record()), 0) for i in range(250)]
    sizes = [len(chunk) for chunk in delete_chunks(items)]
    assert sizes == [100, 100, 50]  # ≤ 100 identities per request (and ≤ 100 guids)


# -- worker, real Redis ---------------------------------------------------------------------------------------


class Fake(FakeCleverTap):
    """The fake CleverTap, also answering the delete call; ``calls`` keeps both kinds in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.delete_status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == DELETE_PATH:
            body = orjson.loads(request.content)
            self.calls.append(("delete", body))
            if self.delete_status != 200:
                return httpx.Response(self.delete_status, json={"status": "fail", "error": "unavailable"})
            return httpx.Response(200, json={"status": "success", "processed": 1})
        self.calls.append(("upload", [r.get("identity") for r in orjson.loads(request.content)["d"]]))
        return super().handler(request)

    def users(self) -> list[Any]:
        return [record.get("identity") for _, record in self.received]


pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


POLICY = RetryPolicy(window_s=100.0, backoff_min_s=1.0, backoff_max_s=2.0, auth_pause_s=30.0)


@pytest.fixture(params=["copy", "large"])
def drainer(request: pytest.FixtureRequest, redis_client: redis.Redis, keys: Keys, fake: Fake, clock: Clock) -> Drainer:
    """A drainer whose screen keeps a copy of the suppressions, or (``large``) asks Redis for each batch's ids."""
    drainer = build(redis_client, keys, {WK: DEST}, fake, clock=clock, policy=POLICY)
    drainer.deliverer.suppressions.window_s = 1000.0
    if request.param == "large":
        drainer.deliverer.suppressions.large = 0
    return drainer


def skipped(drainer: Drainer) -> int:
    return drainer.drain(0).tally.skipped


def test_delete_user_track_deletes_and_drops_the_users_messages(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake
) -> None:
    redis_client.set(keys.token_sent(WK, "a1"), "token-of-a1")
    before = [track("u1", 0), track("u2", 0)]
    deletion = track("u1", 1, event="Delete User", anonymousId="a1")
    after = [track("u1", 2), track("u2", 2), track("x", 3, userId=None, anonymousId="a1")]
    enqueue(redis_client, keys, WK, [*before, deletion, *after])
    result = drainer.drain(0)
    assert result.tally.skipped == 3  # u1 before and after it in the batch, and the anonymous a1 event
    assert result.tally.delivered == 3  # the two u2 events and the deletion
    assert fake.users() == ["u2", "u2"]
    assert ("delete", {"identity": ["u1"], "guid": ["a1"]}) in fake.calls
    state = {(s["kind"], s["id"], s["via"]) for s in suppressed(redis_client, keys, DEST, NOW)}
    assert state == {("identity", "u1", "track"), ("guid", "a1", "track")}
    assert redis_client.get(keys.token_sent(WK, "a1")) is None  # a returning user registers its token again
    enqueue(redis_client, keys, WK, [track("u1", 4), track("u3", 4)])  # new messages: u1 stays suppressed
    assert skipped(drainer) == 1
    assert fake.users() == ["u2", "u2", "u3"]
    assert redis_client.xlen(keys.stream(0)) == 0  # every entry acknowledged and gone
    assert drainer.deliverer.client.xpending(keys.stream(0), "workers")["pending"] == 0


def test_cli_way_drops_retries_and_deletes_after_the_upload_in_flight(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake, clock: Clock
) -> None:
    fake.rule = lambda records, _: httpx.Response(503) if records[0].get("identity") == "u1" else None
    enqueue(redis_client, keys, WK, [track("u1", 0)])
    assert drainer.drain(0).tally.retried == 1  # in the retry schedule
    fake.rule = None
    deletion = delete_user(
        redis_client, keys, dlq.replay_producer(keys, 1), DEST, user_id="u1", window_s=1000.0, via="cli", now=NOW
    )
    assert deletion.identity == ["u1"]
    assert deletion.guid == []
    assert deletion.suppressed_until == NOW + 1000
    enqueue(redis_client, keys, WK, [track("u1", 1), track("u2", 1)])
    clock.now += 10  # the retry is due
    result = drainer.drain(0)
    assert result.tally.skipped == 2  # the retried message and the new one
    assert fake.users() == ["u2"]
    assert fake.calls[-1] == ("delete", {"identity": ["u1"]})
    assert redis_client.zcard(keys.retry_due(0)) == 0


def test_suppression_expires_and_unsuppress_lifts_it(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake, clock: Clock
) -> None:
    producer = dlq.replay_producer(keys, 1)
    delete_user(redis_client, keys, producer, DEST, user_id="u1", window_s=100.0, via="cli", now=NOW)
    delete_user(redis_client, keys, producer, DEST, anonymous_id="a2", window_s=1000.0, via="cli", now=NOW)
    drainer.drain(0)
    clock.now = NOW + 50
    enqueue(redis_client, keys, WK, [track("u1", 1), track("x", 1, userId=None, anonymousId="a2")])
    assert skipped(drainer) == 2
    clock.now = NOW + 101  # u1's window is over; a2's is not
    enqueue(redis_client, keys, WK, [track("u1", 2), track("x", 2, userId=None, anonymousId="a2")])
    assert skipped(drainer) == 1
    assert fake.users() == ["u1"]
    assert unsuppress(redis_client, keys, DEST, anonymous_id="a2") == 1
    assert unsuppress(redis_client, keys, DEST, anonymous_id="a2") == 0
    enqueue(redis_client, keys, WK, [track("x", 3, userId=None, anonymousId="a2")])
    assert skipped(drainer) == 0
    assert [record.get("objectId") for _, record in fake.received] == [None, "a2"]
    assert suppressed(redis_client, keys, DEST, NOW + 101) == []  # expired entries pruned, lifted ones gone


def test_failing_delete_is_retried_dead_lettered_and_replayable(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake, clock: Clock
) -> None:
    fake.delete_status = 503
    enqueue(redis_client, keys, WK, [track("u1", 0, event="Delete User")])
    assert drainer.drain(0).tally.retried == 1
    for _ in range(30):  # retried with backoff until the 100 s window has passed
        clock.now += 5
        if drainer.drain(0).tally.deadlettered:
            break
    store = DeadLetterStore(redis_client, keys)
    (letter,) = store.scan()
    assert (letter.reason, letter.status, letter.event) == ("retries_exhausted", 503, "Delete User")
    assert letter.attempts > 2
    assert "unavailable" in letter.error
    attempts = sum(1 for kind, _ in fake.calls if kind == "delete")
    assert attempts == letter.attempts
    fake.delete_status = 200
    where = make_filter(now=clock.now, event="Delete User")
    assert dlq.replay(store, dlq.replay_producer(keys, 1), {WK: DEST}, where).replayed == 1
    assert drainer.drain(0).tally.delivered == 1
    assert fake.calls[-1] == ("delete", {"identity": ["u1"]})
    assert list(store.scan()) == []
    assert redis_client.zcard(keys.retry_due(0)) == 0


def test_rejected_delete_is_dead_lettered_with_the_status(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake
) -> None:
    fake.delete_status = 400
    enqueue(redis_client, keys, WK, [track("u1", 0, event="Delete User")])
    assert drainer.drain(0).tally.deadlettered == 1
    (letter,) = DeadLetterStore(redis_client, keys).scan()
    assert (letter.reason, letter.status) == ("rejected", 400)


# -- the admin API and the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def admin(redis_url: str, prefix: str) -> AdminClient:
    from fastapi import FastAPI

    from ingest.admin.mount import mount

    app = FastAPI()
    assert mount(app, config(redis_url, prefix, "admin-token-0123456789"))
    return AdminClient(app)


def test_admin_api_deletes_unsuppresses_and_lists(admin: AdminClient, redis_client: redis.Redis, keys: Keys) -> None:
    body = {"destination": "wk1", "user_id": "u9"}
    assert admin.post("/admin/users/delete", json=body).status_code == 401
    answer = admin.post("/admin/users/delete", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json()["identity"] == ["u9"]
    assert answer.json()["accepted"] is True
    entries = [e for p in range(4) for e in redis_client.xrange(keys.stream(p))]
    (entry,) = entries
    message = orjson.loads(entry[1][b"m"])
    assert message["event"] == "Delete User"
    assert message["userId"] == "u9"
    assert message["context"]["ctrelay"]["deletion"] == "admin"
    listed = admin.get("/admin/users/suppressed?destination=wk1", headers=AUTH).json()
    assert [(s["id"], s["via"]) for s in listed["suppressed"]] == [("u9", "admin")]
    assert (
        admin.post("/admin/users/delete", json={"destination": "nope", "user_id": "u"}, headers=AUTH).status_code == 404
    )
    both = {"destination": "wk1", "user_id": "u", "anonymous_id": "a"}
    assert admin.post("/admin/users/delete", json=both, headers=AUTH).status_code == 400
    assert admin.post("/admin/users/unsuppress", json=body, headers=AUTH).json() == {"unsuppressed": 1}
    assert admin.get("/admin/users/suppressed?destination=wk1", headers=AUTH).json()["count"] == 0


@pytest.fixture
def cli_env(tmp_path: Any, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "destinations.toml"
    path.write_text('[[destinations]]\nwrite_key = "wk1"\naccount_id = "ACC-1"\npasscode = "s"\n')
    for name, value in {
        "REDIS_URL": redis_url, "CTRELAY_REDIS_PREFIX": prefix, "CTRELAY_DESTINATIONS": str(path),
        "CTRELAY_PARTITIONS": "4", "CTRELAY_SUPPRESSION_WINDOW_S": "3600",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def test_cli_delete_unsuppress_list(cli_env: None, redis_client: redis.Redis, keys: Keys) -> None:
    from typer.testing import CliRunner

    from worker.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["users", "delete", "--destination", "wk1", "--anonymous-id", "a7"])
    assert done.exit_code == 0, done.output
    answer = orjson.loads(done.stdout.splitlines()[0])
    assert answer["guid"] == ["a7"]
    assert answer["identity"] == []
    assert sum(redis_client.xlen(keys.stream(p)) for p in range(4)) == 1
    listed = runner.invoke(app, ["users", "list", "--destination", "wk1"])
    (line,) = listed.stdout.splitlines()
    entry = orjson.loads(line)
    assert (entry["kind"], entry["id"], entry["via"]) == ("guid", "a7", "cli")
    assert 3590 < entry["until"] - entry["at"] <= 3600
    bad = runner.invoke(app, ["users", "delete", "--destination", "wk1"])
    assert bad.exit_code == 2
    assert "exactly one" in bad.output
    unknown = runner.invoke(app, ["users", "delete", "--destination", "nope", "--user-id", "u"])
    assert unknown.exit_code == 2
    assert "no such write key" in unknown.output
    lifted = runner.invoke(app, ["users", "unsuppress", "--destination", "wk1", "--anonymous-id", "a7"])
    assert lifted.exit_code == 0
    assert orjson.loads(lifted.stdout) == {"unsuppressed": 1}
    again = runner.invoke(app, ["users", "unsuppress", "--destination", "wk1", "--anonymous-id", "a7"])
    assert again.exit_code == 1


def test_ingest_suppresses_at_acceptance_so_queued_messages_ahead_are_dropped(
    drainer: Drainer, redis_url: str, *, redis_client: redis.Redis, keys: Keys, fake: Fake, clock: Clock
) -> None:
    import asyncio
    import time

    from ingest.app import create_app
    from worker.core.destinations import Destinations
    from worker.core.settings import Config, Settings

    settings = Settings(REDIS_URL=redis_url, redis_prefix=keys.prefix, partitions=1)
    app = create_app(Config(settings=settings, destinations=Destinations([DEST])))

    async def send() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        statuses = []
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test", auth=(WK, "")) as http:
            for batch in ([track("u1", 0), track("u2", 0)], [track("u1", 1, event="Delete User")]):
                statuses.append((await http.post("/v1/batch", json={"batch": batch})).status_code)
        await app.state.ingest.client.aclose()
        return statuses

    assert asyncio.run(send()) == [200, 200]
    # suppressed on acceptance, before any worker ran
    clock.now = time.time()  # ingest suppressed with the real clock
    assert [(s["id"], s["via"]) for s in suppressed(redis_client, keys, DEST, clock.now)] == [("u1", "track")]
    drainer.read_batch = 2  # the first step reads only what was queued ahead of the deletion
    first = drainer.drain(0)
    assert first.entries == 3
    assert fake.users() == ["u2"]  # u1's queued event was dropped, though read before the deletion
    assert [kind for kind, _ in fake.calls] == ["upload", "delete"]
    assert first.tally.skipped == 1


def _ingest_app(redis_url: str, keys: Keys) -> Any:
    from ingest.app import create_app
    from worker.core.destinations import Destinations
    from worker.core.settings import Config, Settings

    settings = Settings(REDIS_URL=redis_url, redis_prefix=keys.prefix, partitions=1)
    return create_app(Config(settings=settings, destinations=Destinations([DEST])))


def _post_batches(app: Any, batches: list[list[dict[str, Any]]]) -> list[int]:
    import asyncio

    async def send() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        statuses = []
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test", auth=(WK, "")) as http:
            for batch in batches:
                statuses.append((await http.post("/v1/batch", json={"batch": batch})).status_code)
        await app.state.ingest.client.aclose()
        return statuses

    return asyncio.run(send())


def test_ingest_a_duplicate_deletion_does_not_suppress_again(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """A client's retry of a Delete User track after ``ctrelay users unsuppress`` is a duplicate: no suppression."""
    import time

    deletion = track("u1", 0, event="Delete User")
    assert _post_batches(_ingest_app(redis_url, keys), [[deletion]]) == [200]
    assert [s["id"] for s in suppressed(redis_client, keys, DEST, time.time())] == ["u1"]
    assert unsuppress(redis_client, keys, DEST, user_id="u1") == 1
    version = redis_client.hget(keys.suppressed(WK), "v")
    assert _post_batches(_ingest_app(redis_url, keys), [[deletion, track("u2", 1)]]) == [200]
    assert suppressed(redis_client, keys, DEST, time.time()) == []
    assert redis_client.hget(keys.suppressed(WK), "v") == version  # no change: workers re-read nothing
    assert redis_client.xlen(keys.stream(0)) == 2  # the deletion once, and u2's event


def test_ingest_a_failed_enqueue_suppresses_nobody(redis_url: str, redis_client: redis.Redis, keys: Keys) -> None:
    """The suppression and the Delete User track are written together: a failed XADD (503) leaves neither."""
    import time

    redis_client.set(keys.stream(0), "not a stream")  # the XADD fails (WRONGTYPE): Redis refuses the write
    deletion = track("u1", 0, event="Delete User")
    assert _post_batches(_ingest_app(redis_url, keys), [[deletion]]) == [503]
    assert suppressed(redis_client, keys, DEST, time.time()) == []
    assert not redis_client.exists(keys.suppressed(WK))
    redis_client.delete(keys.stream(0))  # Redis takes writes again: the client's retry is new, not a duplicate
    assert _post_batches(_ingest_app(redis_url, keys), [[deletion]]) == [200]
    assert [s["id"] for s in suppressed(redis_client, keys, DEST, time.time())] == ["u1"]
    assert redis_client.xlen(keys.stream(0)) == 1


def test_a_user_deleted_while_a_drain_runs_is_screened_from_its_next_batch(
    drainer: Drainer, redis_client: redis.Redis, keys: Keys, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch's screen reads the suppressions' versions in its read's round trip, after the read: a deletion
    made while the batch before it was uploaded is seen (its version moved), with no round trip of its own."""
    drainer.read_batch = 3
    enqueue(redis_client, keys, WK, [track("u1", 0), track("u2", 0), track("u3", 0)])
    enqueue(redis_client, keys, WK, [track("u1", 1), track("u2", 1)])
    producer = dlq.replay_producer(keys, 1)
    deleted: list[str] = []

    def delete_during_the_upload(records: list[dict[str, Any]], passcode: str) -> None:
        if not deleted:
            delete_user(redis_client, keys, producer, DEST, user_id="u1", window_s=1000.0, via="cli", now=NOW)
            deleted.append("u1")

    fake.rule = delete_during_the_upload
    original = redis.client.Pipeline.execute
    views: list[bool] = []  # per pipeline asking a version: whether it also read the stream

    def record(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        commands = [str(args[0]) for args, _ in self.command_stack]
        if "HLEN" in commands:
            views.append("XREADGROUP" in commands)
        return original(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", record)
    result = drainer.drain(0)
    assert fake.users() == ["u1", "u2", "u3", "u2"]  # u1's second message came after the deletion: dropped
    assert result.tally.skipped == 1
    assert views[:3] == [False, True, True]  # the first batch asks alone (nothing read before it), the next ones not
