"""Integration (real Redis): the entries a drain reads a second time are counted, by how, and only those."""

from __future__ import annotations

import pytest
import redis
from delivery_fakes import FakeCleverTap, build, enqueue, track

from worker.core.destinations import Destination
from worker.core.keys import GROUP, Keys
from worker.delivery import metrics

pytestmark = pytest.mark.integration

DESTS = {"wk": Destination(write_key="wk", account_id="ACC", passcode="secret", endpoint="http://ct.test")}


def read_again() -> dict[str, float]:
    return {how: metrics.entries_read_again.labels(how)._value.get() for how in ("own", "idle", "dead")}


def grown(before: dict[str, float]) -> dict[str, float]:
    return {how: value - before[how] for how, value in read_again().items() if value != before[how]}


def test_new_entries_are_not_counted(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(5)])
    before = read_again()
    assert drainer.drain(0).tally.delivered == 5
    assert grown(before) == {}


def test_own_pending_entries_are_counted(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(5)])
    redis_client.xreadgroup(GROUP, drainer.consumer, {keys.stream(0): ">"}, count=3)  # a drain of it that raised
    before = read_again()
    result = drainer.drain(0)
    assert (result.reclaimed, result.tally.delivered) == (3, 5)
    assert grown(before) == {"own": 3}


def test_a_dead_consumers_entries_are_counted(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(4)])
    redis_client.xreadgroup(GROUP, "dead-worker", {keys.stream(0): ">"}, count=2)  # no liveness key: dead
    before = read_again()
    assert drainer.drain(0).reclaimed == 2
    assert grown(before) == {"dead": 2}


def test_a_live_consumers_idle_entries_are_counted(redis_client: redis.Redis, keys: Keys) -> None:
    fake = FakeCleverTap()
    drainer = build(redis_client, keys, DESTS, fake, reclaim_idle_s=0.0)
    enqueue(redis_client, keys, "wk", [track("u", i) for i in range(4)])
    redis_client.xreadgroup(GROUP, "live-worker", {keys.stream(0): ">"}, count=2)
    redis_client.set(keys.alive("live-worker"), 1, px=5000)
    before = read_again()
    assert drainer.drain(0).reclaimed == 2
    assert grown(before) == {"idle": 2}
