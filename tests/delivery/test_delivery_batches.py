"""Integration (real Redis): draining a partition into a fake CleverTap, per-record outcomes, retries, atomicity."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from delivery_fakes import Clock, FakeCleverTap, build, enqueue, track
from pydantic import SecretStr

from worker.core.destinations import Destination
from worker.core.keys import GROUP, Keys
from worker.delivery.work import Work
from worker.store.deadletters import DeadLetterStore
from worker.store.retries import RetrySchedule
from worker.store.streams import COMMIT_HELD
from worker.transform.deletions import Delete

pytestmark = pytest.mark.integration

DEST = Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://ct.test")
DESTS = {"wk": DEST}


def pending(client: redis.Redis, keys: Keys) -> int:
    return int(client.xpending(keys.stream(0), GROUP)["pending"])


def letters(client: redis.Redis, keys: Keys) -> list[Any]:
    return list(DeadLetterStore(client, keys).scan())


def test_drain_delivers_acks_and_keeps_per_user_order(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    messages = [track(f"u{i % 3}", i) for i in range(30)]
    enqueue(redis_client, keys, "wk", messages)
    result = drainer.drain(0)
    assert result.acquired
    assert result.tally.delivered == 30
    assert [r["evtData"]["n"] for _, r in fake.received] == list(range(30))
    assert pending(redis_client, keys) == 0
    assert drainer.drain(0).entries == 0
    assert redis_client.xlen(keys.stream(0)) == 0  # delivered entries are deleted, not only acknowledged
    enqueue(redis_client, keys, "wk", [track("u0", 30)])
    (group,) = redis_client.xinfo_groups(keys.stream(0))
    assert group["lag"] == 1  # the lag stays known after the deletions (the ticker relies on it)


def test_skipped_invalid_and_foreign_entries(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    group_call = {"type": "group", "userId": "u", "groupId": "g", "messageId": "m-group"}
    no_ids = {"type": "track", "event": "E", "messageId": "m-noid"}
    enqueue(redis_client, keys, "wk", [group_call, no_ids, track("u", 1)])
    enqueue(redis_client, keys, "unknown-key", [track("u", 2)])
    redis_client.xadd(keys.stream(0), {"foo": "bar"})
    redis_client.xadd(keys.stream(0), {"w": "wk", "m": "{not json"})
    result = drainer.drain(0)
    assert (result.tally.delivered, result.tally.skipped, result.tally.deadlettered) == (1, 1, 4)
    found = letters(redis_client, keys)
    assert {letter.reason for letter in found} == {"invalid_message"}
    assert any("unknown write key" in letter.error for letter in found)
    assert pending(redis_client, keys) == 0


def test_555_retries_only_that_record_until_delivered(redis_client: redis.Redis, keys: Keys) -> None:
    fake, clock = FakeCleverTap(), Clock()
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    flaky = {"n": 3}
    fake.record_codes = lambda record: 555 if record["evtData"] == flaky else None
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(5)])
    result = drainer.drain(0)
    assert (result.tally.delivered, result.tally.retried) == (4, 1)
    schedule = RetrySchedule(redis_client, keys, 0)
    assert schedule.size() == 1
    assert pending(redis_client, keys) == 0  # waiting records do not hold the stream
    assert drainer.drain(0).retries == 0  # not due yet
    fake.record_codes = lambda record: None
    clock.now += 11
    assert drainer.drain(0).tally.delivered == 1
    assert sorted(r["evtData"]["n"] for _, r in fake.received) == [0, 1, 2, 3, 4]
    assert schedule.size() == 0
    assert letters(redis_client, keys) == []


def test_permanent_codes_dead_letter_with_code_and_deliver_the_rest(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    fake.record_codes = lambda record: 512 if record["evtData"]["n"] % 4 == 0 else None
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(8)])
    drainer.drain(0)
    found = letters(redis_client, keys)
    assert sorted(letter.message["properties"]["n"] for letter in found) == [0, 4]
    assert {(letter.reason, letter.code, letter.status) for letter in found} == {("rejected", 512, 200)}
    assert len(fake.received) == 6


def test_a_400_is_split_until_only_the_poison_record_is_dead_lettered(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()

    def poison(records: list[dict[str, Any]], passcode: str) -> httpx.Response | None:
        if any(r["evtName"] == "Poison" for r in records):
            return httpx.Response(400, json={"status": "fail", "error": "malformed"})
        return None

    fake.rule = poison
    drainer = build(redis_client, keys, DESTS, fake)
    messages = [track(f"u{i}", i, event="Poison" if i == 37 else "Clicked") for i in range(100)]
    enqueue(redis_client, keys, "wk", messages)
    result = drainer.drain(0)
    found = letters(redis_client, keys)
    assert [(letter.reason, letter.status, letter.message["properties"]["n"]) for letter in found] == [
        ("rejected", 400, 37)
    ]
    assert len(fake.received) == 99
    assert result.tally.uploads <= 2 * 7 + 1  # a bisection, not one request per record


@pytest.mark.parametrize("status", [429, 500, 503])
def test_batch_failures_go_to_the_schedule_then_retries_exhausted(
    redis_client: redis.Redis, keys: Keys, status: int
) -> None:
    fake, clock = FakeCleverTap(), Clock()
    fake.rule = lambda records, passcode: httpx.Response(status, text="busy")
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(3)])
    assert drainer.drain(0).tally.retried == 3
    assert pending(redis_client, keys) == 0
    for _ in range(30):  # keep failing until the 100 s window is over
        clock.now += 10
        drainer.drain(0)
    found = letters(redis_client, keys)
    assert len(found) == 3
    assert {(letter.reason, letter.status) for letter in found} == {("retries_exhausted", status)}
    assert all(letter.attempts > 2 for letter in found)
    assert RetrySchedule(redis_client, keys, 0).size() == 0


def test_wrong_passcode_pauses_then_delivers_once_fixed(redis_client: redis.Redis, keys: Keys) -> None:
    fake, clock = FakeCleverTap(), Clock()
    fake.rule = lambda records, passcode: None if passcode == "right" else httpx.Response(401, json={"error": "auth"})
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(5)])
    drainer.drain(0)
    assert redis_client.exists(keys.paused("wk"))
    requests = len(fake.requests)
    enqueue(redis_client, keys, "wk", [track("u", 5)])
    drainer.drain(0)
    assert len(fake.requests) == requests  # paused: nothing sent
    assert letters(redis_client, keys) == []
    assert RetrySchedule(redis_client, keys, 0).size() == 6
    fixed = build(
        redis_client, keys, {"wk": DEST.model_copy(update={"passcode": SecretStr("right")})}, fake, clock=clock
    )
    redis_client.delete(keys.paused("wk"))  # the pause has run out
    clock.now += 31
    fixed.drain(0)
    assert sorted(r["evtData"]["n"] for _, r in fake.received) == [0, 1, 2, 3, 4, 5]
    assert letters(redis_client, keys) == []


def test_wrong_passcode_dead_letters_as_auth_failed_after_the_window(redis_client: redis.Redis, keys: Keys) -> None:
    fake, clock = FakeCleverTap(), Clock()
    fake.rule = lambda records, passcode: httpx.Response(403, json={"error": "forbidden"})
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    for _ in range(6):
        drainer.drain(0)
        redis_client.delete(keys.paused("wk"))
        clock.now += 31
    assert [(letter.reason, letter.status) for letter in letters(redis_client, keys)] == [("auth_failed", 403)]


def test_token_records_are_sent_once_per_object_id_within_the_window(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    context = {"device": {"token": "tok-1", "type": "android"}}
    identify = [
        {"type": "identify", "anonymousId": "anon-1", "messageId": f"m{i}", "context": context, "traits": {"n": i}}
        for i in range(3)
    ]
    enqueue(redis_client, keys, "wk", identify[:2])
    drainer.drain(0)
    enqueue(redis_client, keys, "wk", identify[2:])
    drainer.drain(0)
    kinds = [record["type"] for _, record in fake.received]
    assert kinds.count("token") == 1
    assert kinds.count("profile") == 3


def test_outcome_and_ack_are_one_transaction(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCleverTap()
    fake.record_codes = lambda record: 512
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    original = redis.client.Pipeline.execute

    def crash(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        if self.transaction and any(args[0] == "XACK" for args, _ in self.command_stack):
            raise redis.ConnectionError("worker died before EXEC")
        return original(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", crash)
    assert drainer.drain(0).tally.deadlettered == 0  # the commit never got through: the drain stopped
    monkeypatch.setattr(redis.client.Pipeline, "execute", original)
    assert letters(redis_client, keys) == []  # neither the letter ...
    assert pending(redis_client, keys) == 1  # ... nor the ack
    redis_client.delete(keys.lease(0))  # the dead drain's lease expires
    survivor = build(redis_client, keys, DESTS, fake)  # the same process (consumer) retries at once
    assert survivor.drain(0).reclaimed == 1
    assert [letter.code for letter in letters(redis_client, keys)] == [512]
    assert pending(redis_client, keys) == 0


def test_a_dead_consumers_entries_are_reclaimed(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(4)])
    drainer = build(redis_client, keys, DESTS, fake, reclaim_idle_s=0.05)
    redis_client.xreadgroup(GROUP, "dead-worker", {keys.stream(0): ">"}, count=3)  # read, never acked
    first = drainer.drain(0)
    assert first.tally.delivered == 1 or first.reclaimed == 3
    import time

    time.sleep(0.1)
    drainer.drain(0)
    assert sorted(r["evtData"]["n"] for _, r in fake.received) == [0, 1, 2, 3]
    assert pending(redis_client, keys) == 0


def test_one_drain_per_partition(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    redis_client.set(keys.lease(0), "someone-else", px=5000)
    redis_client.set(keys.dispatched(0), 1, px=15000)  # the marker of the drain task now running
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    assert not drainer.drain(0).acquired
    assert fake.received == []
    assert not redis_client.exists(keys.dispatched(0))  # a drain that lost the race leaves no stale marker


def test_retries_of_a_destination_removed_from_the_configuration_are_dead_lettered(
    redis_client: redis.Redis, keys: Keys
) -> None:
    fake, clock = FakeCleverTap(), Clock()
    fake.rule = lambda records, passcode: httpx.Response(503)
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    build(redis_client, keys, DESTS, fake, clock=clock).drain(0)
    assert RetrySchedule(redis_client, keys, 0).size() == 1
    clock.now += 11
    build(redis_client, keys, {}, fake, clock=clock).drain(0)
    found = letters(redis_client, keys)
    assert [(letter.reason, letter.write_key) for letter in found] == [("invalid_message", "wk")]
    assert "unknown write key" in found[0].error
    assert RetrySchedule(redis_client, keys, 0).size() == 0


def test_cluster_gauges_are_read_from_redis(redis_client: redis.Redis, keys: Keys) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from worker.delivery.metrics import ClusterCollector
    from worker.store.slots import AccountSlots

    fake, clock = FakeCleverTap(), Clock()
    fake.rule = lambda records, passcode: httpx.Response(401)
    enqueue(redis_client, keys, "wk", [track("u", 1), track("v", 2)])
    build(redis_client, keys, DESTS, fake, clock=clock).drain(0)  # paused, 2 in the retry schedule
    enqueue(redis_client, keys, "wk", [track("w", 3)])  # 1 unread
    AccountSlots(redis_client, keys, 15).try_acquire("ACC")
    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(redis_client, keys, partitions=2, accounts=["ACC"], destinations={"wk": "ACC"}, max_cap=15)
    )
    text = generate_latest(registry).decode()
    assert 'ctrelay_destination_paused{destination="ACC"} 1.0' in text
    assert "ctrelay_retry_schedule_size 2.0" in text
    assert "ctrelay_backlog 3.0" in text  # 1 unread + 2 scheduled
    assert 'ctrelay_stream_lag{partition="0"} 1.0' in text
    assert 'ctrelay_stream_lag{partition="1"} 0.0' in text
    assert 'ctrelay_uploads_in_flight{account="ACC"} 1.0' in text
    assert 'ctrelay_concurrency_cap{account="ACC"} 15.0' in text


def test_cluster_gauges_missing_while_redis_does_not_answer() -> None:
    """A scrape during a Redis outage still serves the process's own metrics (the worker is not down)."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from worker.cli.embedded import free_port
    from worker.delivery.metrics import ClusterCollector

    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    registry = CollectorRegistry()
    Counter("own_work", "this process's counter", registry=registry).inc()
    registry.register(ClusterCollector(dead, Keys("gone"), partitions=2, accounts=["ACC"], destinations={}, max_cap=15))
    text = generate_latest(registry).decode()
    assert "own_work_total 1.0" in text
    assert "ctrelay_stream_lag" not in text
    dead.close()


def test_a_redis_blip_after_the_200_does_not_send_the_batch_again(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit (and the slot release) fail while Redis blips; the commit is written once it answers."""
    from worker.delivery import metrics
    from worker.store.slots import AccountSlots

    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, commit_patience_s=30.0)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(20)])
    original_execute, original_release = redis.client.Pipeline.execute, AccountSlots.release
    failures = {"commit": 3, "release": 1}

    def blip(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        if self.transaction and failures["commit"] and any(args[0] == "XACK" for args, _ in self.command_stack):
            failures["commit"] -= 1
            raise redis.ConnectionError("Redis restarting")
        if not self.transaction and failures["release"] and any(args[0] == "ZREM" for args, _ in self.command_stack):
            failures["release"] -= 1  # the release with the commit in its round trip (a single Redis)
            raise redis.ConnectionError("Redis restarting")
        return original_execute(self, raise_on_error)

    def release(self: AccountSlots, account_id: str, token: str) -> None:
        if failures["release"]:
            failures["release"] -= 1
            raise redis.ConnectionError("Redis restarting")
        original_release(self, account_id, token)

    monkeypatch.setattr(redis.client.Pipeline, "execute", blip)
    monkeypatch.setattr(AccountSlots, "release", release)
    uploads_before = metrics.uploads.labels("ACC", "200")._value.get()
    duplicates_before = sum(
        metrics.duplicates_suspected.labels(cause)._value.get() for cause in ("commit_failed", "lease_lost", "stopped")
    )
    result = drainer.drain(0)
    assert failures == {"commit": 0, "release": 0}
    assert result.tally.delivered == 20
    assert fake.requests == [("ACC", 20)]  # sent once
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.stream(0)) == 0
    assert metrics.uploads.labels("ACC", "200")._value.get() == uploads_before + 1  # counted once
    duplicates = sum(
        metrics.duplicates_suspected.labels(cause)._value.get() for cause in ("commit_failed", "lease_lost", "stopped")
    )
    assert duplicates == duplicates_before


def test_a_commit_that_cannot_be_written_counts_its_duplicates(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.delivery import metrics

    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, commit_patience_s=0.2)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(5)])
    original = redis.client.Pipeline.execute

    def down(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        if self.transaction and any(args[0] == "XACK" for args, _ in self.command_stack):
            raise redis.ConnectionError("Redis down")
        if any(args[:2] == ("EVALSHA", COMMIT_HELD.sha) for args, _ in self.command_stack):
            raise redis.ConnectionError("Redis down")  # the commit sent with the slot's release (a single Redis)
        return original(self, raise_on_error)

    before = metrics.duplicates_suspected.labels("commit_failed")._value.get()
    monkeypatch.setattr(redis.client.Pipeline, "execute", down)
    drainer.drain(0)
    monkeypatch.setattr(redis.client.Pipeline, "execute", original)
    assert metrics.duplicates_suspected.labels("commit_failed")._value.get() == before + 5
    assert pending(redis_client, keys) == 5  # left for the next drain: sent again, and counted


def test_the_fast_path_falls_back_mid_group_and_loses_nothing(redis_client: redis.Redis, keys: Keys) -> None:
    """2,500 plain messages: the first request is delivered whole (fast path), the second answers 503, the third is
    not sent (it would fail alike); the first 1,000 are acknowledged, the other 1,500 are in the retry schedule."""
    fake, clock = FakeCleverTap(), Clock()
    answers = iter([None, httpx.Response(503)])
    fake.rule = lambda records, passcode: next(answers, None)
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    drainer.read_batch = 3000
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(2500)])
    result = drainer.drain(0)
    assert [count for _, count in fake.requests] == [1000, 1000]
    assert (result.tally.delivered, result.tally.retried) == (1000, 1500)
    assert RetrySchedule(redis_client, keys, 0).size() == 1500
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.stream(0)) == 0
    clock.now += 20  # the retries are due: they go the ordinary way (retry items), all delivered
    assert build(redis_client, keys, DESTS, fake, clock=clock).drain(0).tally.delivered == 1500
    assert len(fake.received) == 2500
    assert RetrySchedule(redis_client, keys, 0).size() == 0


def test_interleaved_destinations_are_grouped_in_order_and_a_screened_user_is_dropped(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The batch groups its works by write key as it decodes them (in the order of their first message), and
    groups them again when the deletion screen drops some: per user (and per destination) order holds."""
    other = Destination(write_key="wk2", account_id="ACC2", passcode="secret", endpoint="http://ct.test")
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, {"wk": DEST, "wk2": other}, fake)
    for n in range(12):
        enqueue(redis_client, keys, "wk" if n % 3 else "wk2", [track(f"u{n % 2}", n)])
    result = drainer.drain(0)
    assert result.tally.delivered == 12
    assert [account for account, _ in fake.requests] == ["ACC2", "ACC"]  # wk2's first message came first
    by_account = {account: [r["evtData"]["n"] for a, r in fake.received if a == account] for account in ("ACC", "ACC2")}
    assert by_account == {"ACC": [n for n in range(12) if n % 3], "ACC2": [0, 3, 6, 9]}

    fake.received.clear()
    with redis_client.pipeline(transaction=True) as pipe:  # u1 of wk was deleted (by the operator, earlier)
        drainer.deliverer.suppressions.add(pipe, "wk", Delete("u1", None).record(), time.time(), "cli")
        pipe.execute()
    enqueue(redis_client, keys, "wk", [track("u1", 100), track("u0", 101), track("u1", 102)])
    enqueue(redis_client, keys, "wk2", [track("u1", 103), track("u0", 104)])
    result = drainer.drain(0)
    assert [(a, r["evtData"]["n"]) for a, r in fake.received] == [("ACC", 101), ("ACC2", 103), ("ACC2", 104)]
    assert result.tally.skipped == 2  # u1's tracks of wk; wk2's u1 is another destination's user
    assert pending(redis_client, keys) == 0


def test_a_write_key_decoded_once_per_run_meets_broken_and_unknown_keys_between(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """A batch decodes a write key once per run of entries that carry it: a key that is not UTF-8, an unknown one
    and another destination's between two runs of one key each get their own outcome."""
    other = Destination(write_key="wk2", account_id="ACC2", passcode="secret", endpoint="http://ct.test")
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, {"wk": DEST, "wk2": other}, fake)
    enqueue(redis_client, keys, "wk", [track("u", 0), track("u", 1)])
    redis_client.xadd(keys.stream(0), {"w": b"\xffwk", "m": orjson.dumps(track("u", 2))})
    enqueue(redis_client, keys, "wk", [track("u", 3)])
    enqueue(redis_client, keys, "nope", [track("u", 4)])
    enqueue(redis_client, keys, "wk2", [track("u", 5)])
    enqueue(redis_client, keys, "wk", [track("u", 6)])
    result = drainer.drain(0)
    assert (result.tally.delivered, result.tally.deadlettered) == (5, 2)
    by_account = {account: [r["evtData"]["n"] for a, r in fake.received if a == account] for account in ("ACC", "ACC2")}
    assert by_account == {"ACC": [0, 1, 3, 6], "ACC2": [5]}
    errors = sorted(letter.error for letter in letters(redis_client, keys))
    assert errors[0].startswith("not a ctrelay envelope")
    assert "unknown write key 'nope'" in errors[1]
    assert pending(redis_client, keys) == 0


def test_a_plain_message_kept_as_bytes_comes_back_whole_in_its_retry(redis_client: redis.Redis, keys: Keys) -> None:
    """A plain batch keeps each message as the stream's bytes while it uploads (:class:`Work`): a retry and a dead
    letter still carry the message as it was enqueued."""
    fake, clock = FakeCleverTap(), Clock()
    drainer = build(redis_client, keys, DESTS, fake, clock=clock)
    fake.record_codes = lambda record: {1: 555, 2: 512}.get(record["evtData"]["n"])
    messages = [track("u", i, context={"ip": "203.0.113.7"}) for i in range(3)]
    enqueue(redis_client, keys, "wk", messages)
    assert drainer.drain(0).tally.delivered == 1
    (item,) = RetrySchedule(redis_client, keys, 0).due(clock.now + 3600, 10)
    assert item.message == messages[1]
    (letter,) = letters(redis_client, keys)
    assert letter.message == messages[2]


def test_work_decodes_its_message_bytes_once() -> None:
    message = {"type": "track", "event": "E", "userId": "u", "properties": {"n": [1, 2.5, None]}}
    work = Work("wk", orjson.dumps(message), [{"type": "event"}], b"1-0")
    first = work.message
    assert first == message
    assert work.message is first
    given = Work("wk", message, [{"type": "event"}])
    assert given.message is message


def test_the_fast_paths_commit_goes_with_the_slot_release(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a single Redis a plain group delivered whole is committed in the round trip that gives its slot back (one
    script that checks and renews the lease): no renewal, release and MULTI of their own."""
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(30)])
    original = redis.client.Pipeline.execute
    sent: list[tuple[bool, list[str]]] = []

    def record(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        sent.append((self.transaction, [str(args[0]) for args, _ in self.command_stack]))
        return original(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", record)
    result = drainer.drain(0)
    assert result.tally.delivered == 30
    assert fake.requests == [("ACC", 30)]
    assert [commands for _, commands in sent if "ZREM" in commands] == [["ZREM", "EVALSHA"]]
    assert not [commands for _, commands in sent if "XACK" in commands]
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.stream(0)) == 0
    assert redis_client.zcard(keys.slots("ACC")) == 0  # the slot is back


def test_a_lease_lost_during_the_upload_commits_nothing_on_the_fast_path(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.delivery import metrics

    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(7)])

    def taken_over(records: list[dict[str, Any]], passcode: str) -> None:
        redis_client.set(keys.lease(0), "another-drain", px=30_000)  # ours expired while CleverTap answered
        # then answered as usual (None): every record taken

    fake.rule = taken_over
    before = metrics.duplicates_suspected.labels("lease_lost")._value.get()
    result = drainer.drain(0)
    assert result.tally.delivered == 0
    assert fake.requests == [("ACC", 7)]
    assert pending(redis_client, keys) == 7  # the new holder's: reclaimed, sent again (counted)
    assert redis_client.xlen(keys.stream(0)) == 7
    assert metrics.duplicates_suspected.labels("lease_lost")._value.get() == before + 7
    assert redis_client.get(keys.lease(0)) == b"another-drain"  # neither renewed nor released by the old holder
    assert redis_client.zcard(keys.slots("ACC")) == 0


def test_entries_read_as_flat_fields_in_any_order_or_with_more_fields(redis_client: redis.Redis, keys: Keys) -> None:
    """A new read's entries keep Redis's flat field lists (no dict per entry): ingest's [w, key, m, message] and
    any other order or extra field are read alike."""
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    stream = keys.stream(0)
    redis_client.xadd(stream, {"w": "wk", "m": orjson.dumps(track("u", 0))})
    redis_client.xadd(stream, {"m": orjson.dumps(track("u", 1)), "w": "wk"})
    redis_client.xadd(stream, {"w": "wk", "x": "1", "m": orjson.dumps(track("u", 2))})
    redis_client.xadd(stream, {"w": "wk", "q": orjson.dumps(track("u", 3))})  # no message: a dead letter
    result = drainer.drain(0)
    assert (result.tally.delivered, result.tally.deadlettered) == (3, 1)
    assert [r["evtData"]["n"] for _, r in fake.received] == [0, 1, 2]
    (letter,) = letters(redis_client, keys)
    assert letter.reason == "invalid_message"
    assert pending(redis_client, keys) == 0


def test_a_flat_pipeline_leaves_only_xreadgroup_unparsed(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.store.streams import ensure_group, flat_pipeline

    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    entry = redis_client.xadd(stream, {"w": "wk", "m": "{}"})
    redis_client.hset(keys.paused("wk"), mapping={"a": "1"})
    pipe = flat_pipeline(redis_client)
    pipe.xreadgroup(GROUP, "test", {stream: ">"}, count=10)
    pipe.hgetall(keys.paused("wk"))
    answer, mapping = pipe.execute()
    streams = [list(item) for item in answer.items()] if isinstance(answer, dict) else answer  # RESP3: a map
    assert streams == [[stream.encode(), [[entry, [b"w", b"wk", b"m", b"{}"]]]]]
    assert mapping == {b"a": b"1"}  # parsed as usual
    parsed = redis_client.xreadgroup(GROUP, "test", {stream: "0"})  # the client's own reads: parsed as usual
    assert parsed == [[stream.encode(), [(entry, {b"w": b"wk", b"m": b"{}"})]]]


def paced(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch, arriving: int, pace_s: float = 0.05
) -> tuple[FakeCleverTap, list[float]]:
    """A drainer whose reads after a short one wait for ``pace_s``; ``arriving`` more messages come in during the
    first such wait."""
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    drainer.read_pace_s = pace_s
    drainer.read_batch = 10
    sleeps: list[float] = []
    real_sleep = time.sleep
    drain_thread = threading.get_ident()

    def sleep(seconds: float) -> None:
        # the drain's own (other threads sleep too: keepers, and those left running by earlier tests)
        if 0 < seconds <= pace_s and threading.get_ident() == drain_thread:
            sleeps.append(seconds)
            if len(sleeps) == 1:
                enqueue(redis_client, keys, "wk", [track(f"v{i}", 100 + i) for i in range(arriving)])
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    drainer.drain(0)
    return fake, sleeps


def test_a_read_after_a_short_one_waits_for_the_pace_and_finds_a_fuller_batch(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(3)])
    fake, sleeps = paced(redis_client, keys, monkeypatch, arriving=8)
    assert fake.requests == [("ACC", 3), ("ACC", 8)]  # the 8 that came while it waited: one batch, the same drain
    assert len(sleeps) == 1  # before the second read; that one (8 of 10) was not short: the third came at once
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.stream(0)) == 0


def test_a_read_after_a_full_one_does_not_wait(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(14)])
    fake, sleeps = paced(redis_client, keys, monkeypatch, arriving=0)
    assert fake.requests == [("ACC", 10), ("ACC", 4)]
    assert len(sleeps) == 1  # only after the short read of 4 (before the last read, which found nothing)


def test_no_pace_when_it_is_off(redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(3)])
    fake, sleeps = paced(redis_client, keys, monkeypatch, arriving=8, pace_s=0.0)
    assert fake.requests == [("ACC", 3)]  # the next read came at once, found nothing: the drain ended
    assert sleeps == []


def test_the_pace_setting_goes_to_the_drainer(redis_url: str, keys: Keys) -> None:
    from worker.core.destinations import Destinations
    from worker.core.settings import Config, Settings
    from worker.delivery.app import Runtime

    settings = Settings(redis_url=redis_url, redis_prefix=keys.prefix, partitions=2, read_pace_ms=150)
    runtime = Runtime(Config(settings=settings, destinations=Destinations([DEST])), lambda partition: None)
    try:
        assert runtime.drainer.read_pace_s == 0.15
        assert not hasattr(runtime.deliverer, "read_pace_s")  # the drainer's alone: it paces its reads
    finally:
        runtime.close()


def test_only_a_drains_keepalive_gets_a_held_commit(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.delivery.drain import Keepalive
    from worker.delivery.gate import Gate
    from worker.delivery.outcomes import HeldCommit
    from worker.store.lease import Lease

    drainer = build(redis_client, keys, DESTS, FakeCleverTap())
    outcomes = drainer.deliverer.outcomes
    group = [Work("wk", b"{}", [{"type": "event"}], entry_id=b"1-0")]
    lease = Lease.acquire(redis_client, keys.lease(0), 5.0)
    assert lease is not None
    try:
        held = outcomes.held_commit(0, group, Keepalive(lease, Gate()))
        assert isinstance(held, HeldCommit)
        assert held.entry_ids == [b"1-0"]
        assert outcomes.held_commit(0, group, lambda: True) is None  # a plain callable: committed after it
        assert outcomes.held_commit(0, group, None) is None
        assert outcomes.held_commit(0, [Work("wk", b"{}", [{"type": "event"}])], Keepalive(lease, Gate())) is None
    finally:
        lease.release()
