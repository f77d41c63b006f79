"""Integration (real Redis): a drain that loses its partition's lease, or waits too long for an upload slot, stops
before its next upload or commit and leaves its entries pending; the next holder delivers every one of them."""

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
from worker.store.retries import RetrySchedule
from worker.store.slots import AccountSlots

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
