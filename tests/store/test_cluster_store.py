"""The store's cluster-only paths against a real 3-primary Redis Cluster (started once for the module).

On a cluster, writes that span hash tags are ordered steps (worker/store/ordered.py), the enqueue is one script per
partition, dead-letter replay is XADD-then-remove, and scripts on pipelines go as EVAL (a restarted node has no
script cache). Each path here would fail with CROSSSLOT or NOSCRIPT if a key or a script crossed a slot.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_topology import Cluster, cluster_binaries

from worker.core.destinations import Destination
from worker.core.keys import GROUP, Keys, partition_of
from worker.core.settings import Settings
from worker.ops.users import delete_user
from worker.store.connections import aclose, close, connect, connect_async, is_cluster
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter
from worker.store.ordered import write_in_order
from worker.store.producer import Producer
from worker.store.streams import ack_and_delete, ensure_group
from worker.store.suppressions import VERSION_FIELD, Suppressions

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binaries = cluster_binaries()
    if binaries is None:
        pytest.skip("redis-server or redis-cli is not on the PATH (.ci/run installs them)")
    cluster = Cluster(Path(tmp_path_factory.mktemp("cluster")), *binaries)
    try:
        cluster.start(3)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def settings(cluster: Cluster) -> Settings:
    return Settings(REDIS_URL=cluster.url, redis_cluster=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    client = connect(settings, timeout_s=5)
    assert is_cluster(client)
    yield client
    close(client)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"cl-{uuid.uuid4().hex[:8]}")


def track(user: str, message_id: str) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": user, "messageId": message_id}


def test_the_enqueue_goes_per_partition_and_suppresses_only_new_entries(settings: Settings, keys: Keys) -> None:
    producer = Producer(keys, PARTITIONS, dedup_window=600)
    users = [f"user-{n}" for n in range(12)]
    assert len({partition_of(user, PARTITIONS) for user in users}) == PARTITIONS
    entries = [producer.entry("wk", track(user, f"m-{user}")) for user in users]
    hash_key = keys.suppressed("wk")

    async def run() -> tuple[list[bytes | None], list[bytes | None], Any]:
        client = connect_async(settings, timeout_s=2.0)
        try:
            first = await producer.enqueue(client, entries, (hash_key, VERSION_FIELD, {0: {"i:user-0": "9|1|track"}}))
            again = await producer.enqueue(client, entries[:2], (hash_key, VERSION_FIELD, {0: {"i:x": "9|1|track"}}))
            return first, again, await client.hgetall(hash_key)
        finally:
            await aclose(client)

    first, again, suppressed = asyncio.run(run())
    assert all(first)
    assert again == [None, None]  # duplicates, answered in the request's order
    assert suppressed == {b"i:user-0": b"9|1|track", VERSION_FIELD.encode(): b"1"}  # a duplicate suppresses nobody


def test_ordered_writes_span_tags_and_scripts_survive_an_empty_script_cache(
    client: Any, keys: Keys, cluster: Cluster
) -> None:
    store = DeadLetterStore(client, keys)
    stream = keys.stream(0)
    ensure_group(client, stream)
    entry = client.xadd(stream, {b"w": b"wk", b"m": b"{}"})
    client.xreadgroup(GROUP, "c", {stream: ">"})
    for node in cluster.nodes:
        node.call("SCRIPT", "FLUSH")  # as after a node restart
    letter = Letter.of("wk", track("u", "m1"), "rejected", now=1_800_000_000.0)
    write_in_order(
        client, (True, lambda pipe: store.add(pipe, letter)), (True, lambda p: ack_and_delete(p, stream, [entry]))
    )
    assert store.get(letter.id) == letter
    assert client.xlen(stream) == 0


def test_replay_adds_then_removes_and_skips_letters_already_gone(client: Any, keys: Keys) -> None:
    store = DeadLetterStore(client, keys)
    producer = Producer(keys, PARTITIONS, dedup_window=600)
    letters = [Letter.of("wk", track(f"u{n}", f"m{n}"), "rejected", now=1_800_000_000.0) for n in range(6)]
    store.put(letters)
    store.delete([letters[0].id])  # purged by someone else
    moves = [(letter.id, producer.entry("wk", letter.message)) for letter in letters]
    moved = store.requeue(moves)
    assert moved == [letter.id for letter in letters[1:]]
    assert store.count() == 0
    assert sum(client.xlen(keys.stream(p)) for p in range(PARTITIONS)) == 5
    assert store.requeue(moves) == []  # a second replay sends nothing


def test_a_letter_written_again_during_a_replay_stays(client: Any, keys: Keys) -> None:
    store = DeadLetterStore(client, keys)
    producer = Producer(keys, PARTITIONS, dedup_window=600)
    old = Letter.of("wk", track("u", "m1"), "rejected", now=1_800_000_000.0)
    store.put([old])
    original = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:  # a worker writes the letter again after the replay read it
        client.pipeline = original
        store.put([Letter.of("wk", track("u", "m1"), "rejected", now=1_800_000_100.0)])
        return original(*args, **kwargs)

    client.pipeline = pipeline
    try:
        assert store.requeue([(old.id, producer.entry("wk", old.message))]) == [old.id]
    finally:
        client.pipeline = original
    kept = store.get(old.id)
    assert kept is not None
    assert kept.last_failure == 1_800_000_100.0  # the newer letter was not removed with the replayed one


def test_an_operator_deletion_suppresses_then_queues(client: Any, keys: Keys) -> None:
    producer = Producer(keys, PARTITIONS, dedup_window=600)
    destination = Destination(write_key="wk", account_id="ACC", passcode="p")
    client.set(keys.token_sent("wk", "anon-1"), "t")
    deletion = delete_user(client, keys, producer, destination, anonymous_id="anon-1", window_s=60, via="cli")
    active = Suppressions(client, keys, 60, lambda: deletion.suppressed_until - 60).active("wk", 0)
    assert [s.field for s in active] == ["g:anon-1"]
    assert not client.exists(keys.token_sent("wk", "anon-1"))
    assert client.xlen(keys.stream(partition_of("anon-1", PARTITIONS))) == 1


def test_the_workers_gauges_read_a_cluster(client: Any, keys: Keys) -> None:
    from worker.delivery.metrics import ClusterCollector

    producer = Producer(keys, PARTITIONS, dedup_window=600)
    with client.pipeline(transaction=False) as pipe:
        producer.add(pipe, [producer.entry("wk", track(f"u{n}", f"m{n}")) for n in range(10)])
        pipe.execute()  # some partitions have a stream, others none yet (an error answer, read as empty)
    DeadLetterStore(client, keys).put([Letter.of("wk", track("u", "d1"), "rejected", now=1_800_000_000.0)])
    collector = ClusterCollector(
        client, keys, partitions=PARTITIONS, accounts=["ACC"], destinations={"wk": "dest"}, max_cap=15
    )
    gauges = {family.name: family.samples for family in collector.collect()}
    assert sum(sample.value for sample in gauges["ctrelay_stream_lag"]) == 10
    assert [sample.value for sample in gauges["ctrelay_deadletters"]] == [1]


def test_a_slot_asks_the_pause_marker_and_goes_back_alone_on_a_cluster(client: Any, keys: Keys) -> None:
    """The pause marker and the commit sent with a release have other hash tags than the account's slots: on a
    cluster the marker is read by a GET of its own and the release goes alone (the holder commits after it)."""
    from worker.store.slots import AccountSlots, Paused

    slots = AccountSlots(client, keys, 15)
    client.set(keys.paused("wk"), 401)
    with pytest.raises(Paused) as raised, slots.slot("ACC", paused_key=keys.paused("wk")):
        pass
    assert raised.value.status == 401
    assert client.zcard(keys.slots("ACC")) == 0
    client.delete(keys.paused("wk"))
    with slots.slot("ACC", paused_key=keys.paused("wk")) as held:
        assert client.zcard(keys.slots("ACC")) == 1
        held.then = lambda pipe: pipe.set(keys.stream(0), "never")
    assert held.answers is None
    assert client.zcard(keys.slots("ACC")) == 0
    assert not client.exists(keys.stream(0))
