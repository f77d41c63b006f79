"""Dead-letter operations (worker/ops/deadletters.py), real Redis: stats, preview, replay, purge, export, import."""

from __future__ import annotations

import io
import threading
from typing import Any

import orjson
import pytest
import redis

from worker.core.destinations import Destination, Destinations
from worker.core.errors import OperatorError
from worker.core.keys import GROUP, Envelope, Keys, partition_of
from worker.ops import deadletters as dlq
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Filter, Letter, make_filter, parse_time

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
PARTITIONS = 4


def message(i: int, event: str = "Product Viewed", user: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": user or f"u{i}",
        "messageId": f"m{i}",
        "timestamp": "2027-01-15T08:00:00Z",
        "properties": {"n": i},
    }


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    return DeadLetterStore(redis_client, keys)


@pytest.fixture
def destinations() -> Destinations:
    return Destinations([Destination(write_key="wk1", account_id="ACC-1", passcode="pass-1")])


def streamed(client: redis.Redis, keys: Keys) -> list[tuple[int, Envelope]]:
    """Every entry in the partition streams, with its partition."""
    out = []
    for partition in range(PARTITIONS):
        for _, fields in client.xrange(keys.stream(partition)):
            out.append((partition, Envelope.decode(fields)))
    return out


def test_parse_time_forms() -> None:
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("15m", NOW) == NOW - 900
    assert parse_time("7d", NOW) == NOW - 7 * 86_400
    assert parse_time("1700000000", NOW) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20Z", NOW) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", NOW) == 1_700_000_000  # no zone: UTC
    assert parse_time(None, NOW) is None
    with pytest.raises(OperatorError, match="ISO 8601"):
        parse_time("yesterday", NOW)


def test_make_filter_checks_options() -> None:
    with pytest.raises(OperatorError, match="reason 'nope'"):
        make_filter(now=NOW, reason="nope")
    with pytest.raises(OperatorError, match="since is after until"):
        make_filter(now=NOW, since="1h", until="2h")
    assert make_filter(now=NOW, since="1h", code=523).since == NOW - 3600


def test_stats_groups_by_reason_code_event_destination(store: DeadLetterStore) -> None:
    store.put(
        [Letter.of("wk1", message(i), "rejected", code=523, now=NOW - i) for i in range(3)]
        + [Letter.of("wk2", message(10 + i, "Signed Up"), "auth_failed", status=401, now=NOW) for i in range(2)]
        + [Letter.of("wk1", {"type": "identify", "userId": "x", "messageId": "i"}, "invalid_message", now=NOW)]
    )
    result = dlq.stats(store, Filter())
    assert result.total == 6
    assert result.by_reason == {"rejected": 3, "auth_failed": 2, "invalid_message": 1}
    assert result.groups == {
        ("rejected", 523, "Product Viewed", "wk1"): 3,
        ("auth_failed", None, "Signed Up", "wk2"): 2,
        ("invalid_message", None, "(identify)", "wk1"): 1,
    }
    assert (result.oldest, result.newest) == (NOW - 2, NOW)
    assert dlq.stats(store, Filter(destination="wk2")).to_dict()["groups"] == [
        {"reason": "auth_failed", "code": None, "event": "Signed Up", "destination": "wk2", "count": 2}
    ]


def test_preview_is_todays_transform_without_passcode(store: DeadLetterStore, destinations: Destinations) -> None:
    letter = Letter.of("wk1", message(1), "rejected", now=NOW)
    today = dlq.preview(letter, destinations, NOW)
    assert today["outcome"] == "records"
    assert today["records"][0]["evtName"] == "Product Viewed"
    assert "pass-1" not in orjson.dumps(today).decode()
    group = Letter.of("wk1", {"type": "group", "userId": "u", "groupId": "g", "messageId": "g"}, "rejected", now=NOW)
    assert dlq.preview(group, destinations, NOW)["outcome"] == "skip"
    gone = Letter.of("wk-gone", message(2), "rejected", now=NOW)
    assert dlq.preview(gone, destinations, NOW)["outcome"] == "no_destination"


def test_replay_moves_letters_into_their_partitions(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    letters = [Letter.of("wk1", message(i), "auth_failed", now=NOW + i) for i in range(25)]
    gone = Letter.of("wk-gone", message(99), "rejected", now=NOW)
    store.put([*letters, gone])
    progress: list[tuple[int, int]] = []
    result = dlq.replay(
        store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter(), progress=lambda *a: progress.append(a)
    )
    assert result.replayed == 25
    assert result.kept == {gone.id: "destination not configured"}
    assert progress[-1] == (26, 26)
    assert [letter.id for letter in store.scan()] == [gone.id]
    entries = streamed(redis_client, keys)
    assert sorted(e.message["messageId"] for _, e in entries) == sorted(f"m{i}" for i in range(25))
    for partition, envelope in entries:
        assert envelope.write_key == "wk1"
        assert partition == partition_of(envelope.message["userId"], PARTITIONS)
        assert envelope.message == message(int(envelope.message["messageId"][1:]))
    # replay keeps each user's order: oldest letter first within a stream
    same_user = [Letter.of("wk1", message(100 + i, user="same"), "rejected", now=NOW + 100 - i) for i in range(3)]
    store.put(same_user)
    dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter(type="track", destination="wk1"))
    stream = keys.stream(partition_of("same", PARTITIONS))
    order = [Envelope.decode(f).message["messageId"] for _, f in redis_client.xrange(stream)]
    assert [m for m in order if m in ("m100", "m101", "m102")] == ["m102", "m101", "m100"]


def test_replay_of_a_letter_already_gone_sends_nothing(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    letter = Letter.of("wk1", message(1), "rejected", now=NOW)
    store.put([letter])
    producer = dlq.replay_producer(keys, PARTITIONS)
    kept: dict[str, str] = {}
    assert dlq._move(store, producer, destinations, [letter.id], kept) == 1
    assert dlq._move(store, producer, destinations, [letter.id], kept) == 0
    assert len(streamed(redis_client, keys)) == 1


def test_a_letter_purged_between_read_and_requeue_is_not_sent(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    store.put([Letter.of("wk1", message(i), "rejected", now=NOW) for i in range(3)])
    ids = [letter.id for letter in store.scan()]
    real_get_many = store.get_many

    def read_then_purge(batch: list[str]) -> list[Letter]:
        letters = real_get_many(batch)
        store.delete([Letter.of("wk1", message(0), "rejected", now=NOW).id])  # a purge, between our read and our move
        store.put([Letter.of("wk1", message(50), "auth_failed", now=NOW)])  # and a worker writing a letter
        return letters

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "get_many", read_then_purge)
        moved = dlq._move(store, dlq.replay_producer(keys, PARTITIONS), destinations, ids, {})
    assert moved == 2
    assert sorted(e.message["messageId"] for _, e in streamed(redis_client, keys)) == ["m1", "m2"]
    assert [letter.message["messageId"] for letter in store.scan()] == ["m50"]
    assert store.counts() == {"auth_failed": 1}


def test_two_replays_at_once_send_each_letter_once(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    store.put([Letter.of("wk1", message(i), "rejected", now=NOW + i) for i in range(2000)])
    results: list[dlq.ReplayResult] = []

    def run() -> None:
        results.append(dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter()))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(result.replayed for result in results) == 2000
    sent = [e.message["messageId"] for _, e in streamed(redis_client, keys)]
    assert sorted(sent) == sorted(f"m{i}" for i in range(2000))
    assert store.count() == 0


def test_replay_is_not_starved_by_workers_writing_letters(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    store.put([Letter.of("wk1", message(i), "rejected", now=NOW + i) for i in range(1000)])
    stop = threading.Event()

    def worker() -> None:  # one letter per transaction, as fast as it can, for another destination
        other, n = DeadLetterStore(redis.Redis(connection_pool=redis_client.connection_pool), keys), 0
        while not stop.is_set():
            other.put([Letter.of("wk2", message(10_000 + n), "auth_failed", now=NOW)])
            n += 1

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter(destination="wk1"))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert result.replayed == 1000
    assert len(streamed(redis_client, keys)) == 1000
    assert store.counts()["auth_failed"] == store.count()  # only the other destination's letters are left


def test_replay_rate_paces_batches(store: DeadLetterStore, destinations: Destinations, keys: Keys) -> None:
    store.put([Letter.of("wk1", message(i), "rejected", now=NOW + i) for i in range(100)])
    clock = {"t": 0.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["t"] += seconds

    result = dlq.replay(
        store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter(),
        rate=50, now=lambda: clock["t"], sleep=sleep,
    )  # fmt: skip
    assert result.replayed == 100
    assert len(slept) == 19  # batches of 5 (rate / 10); every batch after the first waits its turn
    assert sum(slept) == pytest.approx(95 / 50)


def test_dry_run_changes_nothing_and_says_what_would_be_sent(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    store.put([Letter.of("wk1", message(1), "rejected", now=NOW), Letter.of("wk-x", message(2), "rejected", now=NOW)])
    result = dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter(), dry_run=True)
    assert result.replayed == 0
    assert store.count() == 2
    assert streamed(redis_client, keys) == []
    by_id = {p["id"]: p for p in result.to_dict()["would_send"]}
    sent = by_id[Letter.of("wk1", message(1), "rejected", now=NOW).id]
    assert sent["outcome"] == "records"
    assert sent["destination"] == "wk1"
    assert sent["records"][0]["evtData"] == {"n": 1}
    assert len(result.kept) == 1


def test_replay_gives_an_import_without_message_id_one(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    letter = Letter.of("wk1", {"type": "identify", "userId": "u"}, "invalid_message", now=NOW)
    store.put([letter])
    dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter())
    [(_, envelope)] = streamed(redis_client, keys)
    assert envelope.message == {"type": "identify", "userId": "u", "messageId": f"dlq-{letter.id}"}


def test_replayed_entries_reach_the_consumer_group(
    store: DeadLetterStore, destinations: Destinations, redis_client: redis.Redis, keys: Keys
) -> None:
    for partition in range(PARTITIONS):
        redis_client.xgroup_create(keys.stream(partition), GROUP, id="0", mkstream=True)
    store.put([Letter.of("wk1", message(i), "rejected", now=NOW) for i in range(10)])
    dlq.replay(store, dlq.replay_producer(keys, PARTITIONS), destinations, Filter())
    read = redis_client.xreadgroup(GROUP, "c1", {keys.stream(p): ">" for p in range(PARTITIONS)}, count=100)
    assert sum(len(entries) for _, entries in read) == 10


def test_purge(store: DeadLetterStore) -> None:
    store.put([Letter.of("wk1", message(i), "rejected" if i % 2 else "auth_failed", now=NOW) for i in range(10)])
    assert dlq.purge(store, Filter(reason="auth_failed")) == 5
    assert store.counts() == {"rejected": 5}
    assert dlq.purge(store, Filter()) == 5
    assert store.count() == 0


def test_export_import_round_trip_and_bad_lines(store: DeadLetterStore, redis_client: redis.Redis) -> None:
    letters = [Letter.of("wk1", message(i), "rejected", code=523, error="e", now=NOW + i) for i in range(5)]
    store.put(letters)
    lines = list(dlq.export(store, Filter()))
    assert [orjson.loads(line)["id"] for line in lines] == [letter.id for letter in letters]  # oldest first
    other = DeadLetterStore(redis_client, Keys(store.keys.prefix + "-copy"))
    try:
        bad = [b"not json\n", b'{"id": "x"}\n', b"\n", orjson.dumps({**orjson.loads(lines[0]), "reason": "nope"})]
        result = dlq.import_lines(other, io.BytesIO(b"".join(lines) + b"".join(bad)))
        assert result.imported == 5
        assert [e.split(":")[0] for e in result.errors] == ["line 6", "line 7", "line 9"]
        assert "missing field" in result.errors[1]
        assert list(other.scan(newest_first=False)) == letters
    finally:
        other.delete([letter.id for letter in letters])
