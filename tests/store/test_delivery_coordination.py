"""Integration (real Redis): account slots (cap, expiry, adaptation; threads and processes), leases, dispatch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import redis

from worker.core.keys import GROUP, Keys
from worker.delivery.drain import dispatch, partitions_with_work
from worker.store.lease import Lease
from worker.store.slots import AccountSlots
from worker.store.streams import ensure_group

pytestmark = pytest.mark.integration


def test_slots_never_exceed_the_cap_across_threads(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=4, slot_ttl_s=10)
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "done": 0}

    def work() -> None:
        for _ in range(5):
            with slots.slot("ACC"):
                with lock:
                    state["now"] += 1
                    state["max"] = max(state["max"], state["now"])
                time.sleep(0.005)
                with lock:
                    state["now"] -= 1
                    state["done"] += 1

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert state["done"] == 80
    assert 1 <= state["max"] <= 4
    assert slots.in_flight("ACC") == 0


_HOLDER = """
import sys, time, redis
from worker.store.slots import AccountSlots
from worker.core.keys import Keys
slots = AccountSlots(redis.Redis.from_url(sys.argv[1]), Keys(sys.argv[2]), max_cap=3, slot_ttl_s=2.0)
held = [slots.acquire("ACC", timeout_s=0.2) for _ in range(5)]
print(sum(token is not None for token in held), flush=True)
time.sleep(60)
"""


def test_slots_are_shared_by_processes_and_expire_when_the_holder_dies(
    redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=3)
    args = [sys.executable, "-c", _HOLDER, redis_url, keys.prefix]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "3"  # the other process took the whole cap
            assert slots.try_acquire("ACC") is None
        finally:
            process.kill()
            process.wait(timeout=10)
    assert slots.acquire("ACC", timeout_s=10.0) is not None  # the dead holder's slots expired


def test_a_slot_expires_at_its_deadline(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=1, slot_ttl_s=0.2)
    assert slots.try_acquire("ACC") is not None
    assert slots.try_acquire("ACC") is None
    assert slots.acquire("ACC", timeout_s=5.0) is not None  # the first holder never released it


def test_the_cap_drops_on_429_once_per_burst_and_recovers_slowly(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=15)
    assert slots.record("ACC", throttled=True) == 11
    assert slots.record("ACC", throttled=True) == 11  # same burst (within a second)
    raised = [slots.record("ACC", throttled=False) for _ in range(60)]
    assert raised[0] == pytest.approx(11 + 1 / 11)
    assert raised == sorted(raised)
    assert raised[-1] == 15
    assert slots.cap("ACC") == 15


def test_the_cap_bounds_acquisition(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=15)
    redis_client.hset(keys.cap("ACC"), "cap", "2.5")
    held = [slots.try_acquire("ACC") for _ in range(4)]
    assert sum(token is not None for token in held) == 2


def test_lease_is_exclusive_renewable_and_expires(redis_client: redis.Redis, keys: Keys) -> None:
    first = Lease.acquire(redis_client, keys.lease(0), 0.2)
    assert first is not None
    assert Lease.acquire(redis_client, keys.lease(0), 0.2) is None
    assert first.renew()
    time.sleep(0.3)
    second = Lease.acquire(redis_client, keys.lease(0), 5)
    assert second is not None
    assert not first.renew()  # taken over: the old holder knows
    first.release()  # and cannot release someone else's lease
    assert redis_client.get(keys.lease(0)) == second.token.encode()
    second.release()
    assert not redis_client.exists(keys.lease(0))


def test_partitions_with_work_and_dispatch_markers(redis_client: redis.Redis, keys: Keys) -> None:
    for partition in range(4):
        ensure_group(redis_client, keys.stream(partition))
    redis_client.xadd(keys.stream(1), {"w": "wk", "m": "{}"})
    redis_client.xadd(keys.stream(2), {"w": "wk", "m": "{}"})
    redis_client.set(keys.lease(2), "busy")
    redis_client.zadd(keys.retry_due(3), {"item": time.time() - 1})
    assert partitions_with_work(redis_client, keys, 4, reclaim_idle_s=60) == [1, 3]
    assert partitions_with_work(redis_client, keys, 4, reclaim_idle_s=60, skip={1}) == [3]  # this process drains 1
    sent: list[int] = []
    assert dispatch(redis_client, keys, [1, 3], sent.append, 10) == [1, 3]
    assert dispatch(redis_client, keys, [1, 3], sent.append, 10) == []
    assert sent == [1, 3]
    assert partitions_with_work(redis_client, keys, 4, reclaim_idle_s=60) == []
    redis_client.delete(keys.dispatched(1), keys.dispatched(3))
    redis_client.xreadgroup(GROUP, "c", {keys.stream(1): ">"})  # read: no lag, but pending
    redis_client.delete(keys.retry_due(3))
    assert partitions_with_work(redis_client, keys, 4, reclaim_idle_s=60) == []
    assert partitions_with_work(redis_client, keys, 4, reclaim_idle_s=0) == [1]


def test_worker_tick_dispatches_and_expires_old_dead_letters(
    redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    from worker.core.destinations import Destination, Destinations
    from worker.core.settings import Config, Settings
    from worker.delivery.app import Runtime
    from worker.store.deadletters import DeadLetterStore
    from worker.store.letters import Letter

    settings = Settings(redis_url=redis_url, redis_prefix=keys.prefix, partitions=2, deadletter_retention=3600)
    destination = Destination(write_key="wk", account_id="ACC", passcode="p", endpoint="http://ct.test")
    sent: list[int] = []
    runtime = Runtime(Config(settings=settings, destinations=Destinations([destination])), sent.append)
    store = DeadLetterStore(redis_client, keys, 3600)
    now = time.time()
    old = Letter.of("wk", {"messageId": "old", "type": "track"}, "rejected", now=now - 7200)
    new = Letter.of("wk", {"messageId": "new", "type": "track"}, "rejected", now=now)
    store.put([new, old])  # (adding the newer one first: its lazy expiry would drop the old one)
    assert store.count() == 2
    ensure_group(redis_client, keys.stream(1))
    redis_client.xadd(keys.stream(1), {"w": "wk", "m": "{}"})
    assert runtime.tick() == [1]
    assert sent == [1]
    assert [letter.id for letter in store.scan()] == [new.id]  # past the retention: gone
    store.put([old])
    runtime.tick()
    assert store.count() == 2  # housekeeping runs once a minute, cluster-wide


def test_idle_consumers_without_pending_entries_are_pruned(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.store.streams import prune_consumers

    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    redis_client.xadd(stream, {"w": "wk", "m": "{}"})
    redis_client.xadd(stream, {"w": "wk", "m": "{}"})
    (done,) = redis_client.xreadgroup(GROUP, "restarted-long-ago", {stream: ">"}, count=1)[0][1]
    redis_client.xack(stream, GROUP, done[0])
    redis_client.xreadgroup(GROUP, "died-holding-one", {stream: ">"}, count=1)
    assert prune_consumers(redis_client, keys, 1, idle_s=3600) == 0  # not idle long enough
    assert prune_consumers(redis_client, keys, 1, idle_s=0) == 1
    names = {c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)}
    assert names == {b"died-holding-one"}  # its entry still waits to be reclaimed


def test_the_keeper_holds_a_lease_past_its_ttl_until_dropped(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.store.lease import LeaseKeeper

    keeper = LeaseKeeper(0.05)
    lease = Lease.acquire(redis_client, keys.lease(0), 0.3)
    assert lease is not None
    keeper.hold(lease)
    time.sleep(0.8)  # well past the TTL: a long request
    assert redis_client.get(keys.lease(0)) == lease.token.encode()
    keeper.drop(lease)
    time.sleep(0.6)
    assert not redis_client.exists(keys.lease(0))  # no longer renewed: it expires (as when the holder dies)


_RENEWING_HOLDER = """
import sys, threading, time, redis
from worker.store.slots import AccountSlots
from worker.core.keys import Keys
slots = AccountSlots(redis.Redis.from_url(sys.argv[1]), Keys(sys.argv[2]), max_cap=3)
def hold():
    with slots.slot("ACC"):
        time.sleep(120)  # a request far longer than the slot's TTL
for _ in range(3):
    threading.Thread(target=hold, daemon=True).start()
while slots.in_flight("ACC") < 3:
    time.sleep(0.01)
print("held", flush=True)
time.sleep(120)
"""


def test_renewed_slots_outlive_their_ttl_and_free_within_seconds_of_a_sigkill(
    redis_client: redis.Redis, keys: Keys, redis_url: str
) -> None:
    from worker.store.slots import SLOT_TTL_S

    slots = AccountSlots(redis_client, keys, max_cap=3)
    args = [sys.executable, "-c", _RENEWING_HOLDER, redis_url, keys.prefix]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "held"
            time.sleep(SLOT_TTL_S + 1.5)  # past the TTL: only the holder's renewals keep the slots
            assert slots.try_acquire("ACC") is None
            assert slots.in_flight("ACC") == 3
        finally:
            process.kill()  # SIGKILL: nothing is given back
            process.wait(timeout=10)
    killed = time.monotonic()
    assert slots.acquire("ACC", timeout_s=SLOT_TTL_S + 30) is not None
    freed_s = time.monotonic() - killed
    print(f"\nslot freed {freed_s:.2f} s after its holder's SIGKILL (TTL {SLOT_TTL_S} s)")
    assert freed_s <= SLOT_TTL_S + 30  # generous bound; the figure is printed


def test_a_slot_is_renewed_no_longer_than_max_hold(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=1, slot_ttl_s=0.3, max_hold_s=0.6)
    other = AccountSlots(redis_client, keys, max_cap=1)
    with slots.slot("ACC"):
        time.sleep(0.5)
        assert other.try_acquire("ACC") is None  # renewed past its TTL
        assert other.acquire("ACC", timeout_s=5.0) is not None  # a stuck holder loses it after max_hold_s


def test_a_failed_release_leaves_the_slot_to_expire(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, max_cap=1, slot_ttl_s=0.3)

    def broken(*_: object) -> None:
        raise redis.ConnectionError("Redis went away")

    slots.release = broken  # type: ignore[method-assign]
    with slots.slot("ACC"):
        pass  # the block's work stands: no exception from the release
    assert slots.try_acquire("ACC") is None
    assert AccountSlots(redis_client, keys, max_cap=1).acquire("ACC", timeout_s=5.0) is not None


def test_a_slot_asks_the_pause_marker_in_its_script(redis_client: redis.Redis, keys: Keys) -> None:
    from worker.store.slots import Paused

    slots = AccountSlots(redis_client, keys, 2)
    redis_client.set(keys.paused("wk"), 403)
    with pytest.raises(Paused) as raised, slots.slot("ACC", paused_key=keys.paused("wk")):
        pass
    assert raised.value.status == 403
    assert redis_client.zcard(keys.slots("ACC")) == 0  # no slot taken
    with slots.slot("ACC"):  # a caller that does not ask is not refused
        pass
    redis_client.delete(keys.paused("wk"))
    with slots.slot("ACC", paused_key=keys.paused("wk")):
        assert redis_client.zcard(keys.slots("ACC")) == 1


def test_commands_sent_with_a_release_share_its_round_trip(redis_client: redis.Redis, keys: Keys) -> None:
    slots = AccountSlots(redis_client, keys, 2)
    with slots.slot("ACC") as held:
        held.then = lambda pipe: (pipe.set(keys.paused("wk"), 1), pipe.get(keys.paused("wk")))
    assert held.answers == [True, b"1"]
    assert redis_client.zcard(keys.slots("ACC")) == 0
