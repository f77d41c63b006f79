"""Integration (real Redis): a drain that loses its partition's lease, or waits too long for an upload slot, stops
before its next upload or commit and leaves its entries pending; the next holder delivers every one of them. A dead
consumer's pending entries (no liveness key) are claimed at once, a live one's only once idle."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from delivery_fakes import FakeCleverTap, build, enqueue, track

from worker.core.destinations import Destination
from worker.core.keys import GROUP, Keys
from worker.delivery.drain import Drainer, DrainResult
from worker.store.deadletters import DeadLetterStore
from worker.store.lease import Liveness
from worker.store.retries import RetrySchedule
from worker.store.slots import AccountSlots
from worker.store.streams import ensure_group

pytestmark = pytest.mark.integration

DEST = Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://ct.test")
DESTS = {"wk": DEST}


def pending(client: redis.Redis, keys: Keys) -> int:
    return int(client.xpending(keys.stream(0), GROUP)["pending"])


def nothing_committed(client: redis.Redis, keys: Keys, messages: int) -> None:
    assert pending(client, keys) == messages
    assert client.xlen(keys.stream(0)) == messages
    assert RetrySchedule(client, keys, 0).size() == 0
    assert list(DeadLetterStore(client, keys).scan()) == []


def drain_in_thread(drainer: Drainer, timeout_s: float) -> DrainResult | None:
    """Run one drain; its result, or None when it is still waiting after ``timeout_s``."""
    results: list[DrainResult] = []
    thread = threading.Thread(target=lambda: results.append(drainer.drain(0)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return results[0] if results else None


def successor(client: redis.Redis, keys: Keys, fake: FakeCleverTap) -> Drainer:
    """Another worker: reclaims what the first left pending at once."""
    drainer = build(client, keys, DESTS, fake, reclaim_idle_s=0.0)
    drainer.consumer = "successor"
    drainer.read_batch = 2000
    return drainer


@pytest.mark.parametrize("messages", [10, 1500], ids=["before-commit", "before-next-request"])
def test_a_drain_whose_lease_is_taken_over_mid_batch_sends_and_commits_no_more(
    redis_client: redis.Redis, keys: Keys, messages: int
) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    drainer.read_batch = 2000  # 1500 messages: one batch, two requests (1000 + 500)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(messages)])

    def take_over(records: list[dict[str, Any]], passcode: str) -> None:
        redis_client.set(keys.lease(0), "another-worker", px=60_000)  # the lease expired and was taken
        # (no answer: the request itself is accepted)

    fake.rule = take_over
    result = drainer.drain(0)
    assert len(fake.requests) == 1  # nothing sent after the lease was lost
    assert not result.more  # the new holder drains the partition, not a successor of this drain
    assert result.tally.delivered == 0
    nothing_committed(redis_client, keys, messages)
    assert redis_client.get(keys.lease(0)) == b"another-worker"  # the old holder did not release another's lease

    fake.rule = None
    redis_client.delete(keys.lease(0))  # the new holder's drain: it reclaims the pending entries
    again = successor(redis_client, keys, fake).drain(0)
    assert again.tally.delivered == messages
    assert {record["identity"] for _, record in fake.received} == {f"u{i}" for i in range(messages)}
    assert pending(redis_client, keys) == 0


def test_a_drain_waits_for_an_upload_slot_at_most_its_budget(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, cap=1)
    drainer.budget_s = 0.3
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(5)])
    blocker = AccountSlots(redis_client, keys, 1, slot_ttl_s=10.0)
    token = blocker.try_acquire("ACC")  # another worker holds the account's only slot
    assert token is not None
    try:
        result = drain_in_thread(drainer, 5.0)
    finally:
        blocker.release("ACC", token)
    assert result is not None, "the drain waited for a slot past its budget"
    assert result.more  # work left: a successor is queued at once
    assert fake.requests == []
    nothing_committed(redis_client, keys, 5)
    assert not redis_client.exists(keys.lease(0))  # released: the next drain can start

    again = drainer.drain(0)  # the same consumer reads its own pending entries first
    assert again.tally.delivered == 5
    assert pending(redis_client, keys) == 0


def test_a_drain_waiting_for_a_slot_stops_when_its_lease_is_lost(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, cap=1)
    drainer.budget_s = 30.0
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(5)])
    blocker = AccountSlots(redis_client, keys, 1, slot_ttl_s=10.0)
    token = blocker.try_acquire("ACC")
    assert token is not None
    results: list[DrainResult] = []
    thread = threading.Thread(target=lambda: results.append(drainer.drain(0)), daemon=True)
    try:
        thread.start()
        for _ in range(200):  # the drain holds the lease and waits for the slot
            if redis_client.exists(keys.lease(0)):
                break
            time.sleep(0.01)
        redis_client.set(keys.lease(0), "another-worker", px=60_000)
        thread.join(5.0)
    finally:
        blocker.release("ACC", token)
        thread.join(15.0)
    assert results, "the drain never ended"
    assert not thread.is_alive()
    assert fake.requests == [], "the drain uploaded after losing its lease"
    assert not results[0].more
    nothing_committed(redis_client, keys, 5)


def read_as(client: redis.Redis, keys: Keys, consumer: str, count: int) -> list[bytes]:
    """Another worker's consumer reads ``count`` entries and never acknowledges them (it dies, or it lives on)."""
    answer: Any = client.xreadgroup(GROUP, consumer, {keys.stream(0): ">"}, count=count)
    return [entry_id for entry_id, _ in answer[0][1]]


def owners(client: redis.Redis, keys: Keys) -> dict[str, int]:
    summary: Any = client.xpending(keys.stream(0), GROUP)
    return {item["name"].decode(): int(item["pending"]) for item in summary["consumers"]}


def test_a_dead_consumers_entries_are_claimed_at_once_and_delivered_before_new_ones(
    redis_client: redis.Redis, keys: Keys
) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, reclaim_idle_s=60.0)  # idle entries alone: a minute
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(30)])
    read_as(redis_client, keys, "killed-worker", 20)  # SIGKILLed: no liveness key, its 20 entries idle ~0 s
    assert not redis_client.exists(keys.alive("killed-worker"))

    result = drainer.drain(0)
    assert result.reclaimed == 20
    assert result.tally.delivered == 30
    assert [record["evtData"]["n"] for _, record in fake.received] == list(range(30)), "per-user order kept"
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.stream(0)) == 0


def test_a_live_consumers_entries_are_not_claimed_before_they_are_idle(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, reclaim_idle_s=60.0)
    enqueue(redis_client, keys, "wk", [track(f"u{i}", i) for i in range(30)])
    read_as(redis_client, keys, "live-worker", 20)
    Liveness(redis_client, keys.alive("live-worker"), 5.0).renew()  # its process lives (its keeper renews this)

    result = drainer.drain(0)
    assert result.reclaimed == 0
    assert result.tally.delivered == 10  # the new entries alone
    assert owners(redis_client, keys) == {"live-worker": 20}

    redis_client.delete(keys.alive("live-worker"))  # its process died: its key expired
    again = drainer.drain(0)
    assert again.reclaimed == 20
    assert again.tally.delivered == 20
    assert pending(redis_client, keys) == 0


def test_a_drain_keeps_its_consumer_alive_and_a_warm_shutdown_deletes_the_key(
    redis_client: redis.Redis, keys: Keys
) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    drainer.lease_ttl_s = 0.6  # the keeper renews every 0.2 s: the key must outlive several TTLs
    drainer.keeper.interval_s = 0.2
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    drainer.drain(0)
    key = keys.alive(drainer.consumer)
    assert 0 < redis_client.pttl(key) <= 600
    time.sleep(1.5)
    assert redis_client.exists(key), "the keeper stopped renewing the liveness key"

    drainer.close()
    assert not redis_client.exists(key)
    time.sleep(0.5)
    assert not redis_client.exists(key), "the keeper renewed the key after the shutdown"


def test_a_drain_task_lost_with_its_worker_holds_its_partition_back_one_lease_ttl_at_most(
    redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    from worker.core.destinations import Destinations
    from worker.core.settings import Config, Settings
    from worker.delivery.app import Runtime

    settings = Settings(redis_url=redis_url, redis_prefix=keys.prefix, partitions=1, lease_ttl_s=0.5)
    lost: list[int] = []  # queued, then prefetched by a worker SIGKILLed before it started the drain
    runtime = Runtime(Config(settings=settings, destinations=Destinations([DEST])), lost.append)
    ensure_group(redis_client, keys.stream(0))
    enqueue(redis_client, keys, "wk", [track("u", 1)])
    assert runtime.tick() == [0]
    assert runtime.tick() == []  # queued: not twice
    assert 0 < redis_client.pttl(keys.dispatched(0)) <= 500
    time.sleep(0.6)
    assert runtime.tick() == [0]  # queued again one lease TTL later
    assert lost == [0, 0]
    runtime.close()
