"""The dead-letter store against a real Redis: ids, replace, counts, filters, time walk, retention."""

from __future__ import annotations

import pytest
import redis

from worker.core.keys import Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Filter, Letter, letter_id

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0


def track(message_id: str, event: str = "Order Completed", user: str = "u1") -> dict[str, object]:
    return {"type": "track", "event": event, "userId": user, "messageId": message_id, "properties": {"a": 1}}


def make(message_id: str, reason: str = "rejected", *, at: float = NOW, write_key: str = "wk1", **kw: object) -> Letter:
    message = kw.pop("message", None) or track(message_id)
    return Letter.of(write_key, message, reason, now=at, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> DeadLetterStore:
    return DeadLetterStore(redis_client, keys, retention_s=14 * 86_400)


def test_letter_id_is_deterministic_per_write_key_and_message_id() -> None:
    assert make("m1").id == make("m1", "auth_failed", at=NOW + 5).id == letter_id("wk1", "m1")
    assert make("m1").id != make("m1", write_key="wk2").id
    assert make("m1").id != make("m2").id
    no_id = {"type": "identify", "userId": "u"}
    assert Letter.of("wk1", no_id, "invalid_message", now=NOW).id == Letter.of("wk1", dict(no_id), "rejected", now=1).id


def test_letter_derives_type_and_event_and_round_trips() -> None:
    letter = make("m1", code=523, error="missing identity", status=200, attempts=3, first_failure=NOW - 60)
    assert (letter.type, letter.event) == ("track", "Order Completed")
    assert Letter.of("wk", {"type": "identify", "event": "x"}, "rejected", now=NOW).event is None
    assert Letter.decode(letter.encode()) == letter
    assert letter.to_dict()["first_failure"] == NOW - 60


def test_add_queues_on_the_callers_transaction(store: DeadLetterStore, redis_client: redis.Redis) -> None:
    redis_client.xadd("x-" + store.keys.prefix, {"a": "b"})
    with redis_client.pipeline(transaction=True) as pipe:
        store.add(pipe, make("m1"))
        assert store.count() == 0  # nothing happens before EXEC
        pipe.delete("x-" + store.keys.prefix)
        pipe.execute()
    assert store.count() == 1
    assert store.get(make("m1").id) == make("m1")


def test_unknown_reason_is_refused(store: DeadLetterStore, redis_client: redis.Redis) -> None:
    with redis_client.pipeline() as pipe, pytest.raises(ValueError, match="unknown dead-letter reason"):
        store.add(pipe, make("m1", "nope"))


def test_re_adding_replaces_and_keeps_counts_right(store: DeadLetterStore) -> None:
    store.put([make("m1", "rejected", code=523), make("m2", "rejected")])
    store.put([make("m1", "auth_failed", at=NOW + 10, status=401)])
    assert store.count() == 2
    assert store.counts() == {"rejected": 1, "auth_failed": 1}
    letter = store.get(make("m1").id)
    assert letter is not None
    assert (letter.reason, letter.status, letter.last_failure) == ("auth_failed", 401, NOW + 10)
    assert store.delete([make("m1").id, make("m2").id, "missing"]) == 2
    assert store.count() == 0
    assert store.counts() == {}
    assert store.oldest() is None


def test_filters(store: DeadLetterStore) -> None:
    store.put(
        [
            make("a", "rejected", code=523, at=NOW - 300),
            make("b", "rejected", code=525, at=NOW - 200, write_key="wk2"),
            make("c", "auth_failed", status=401, at=NOW - 100, message=track("c", event="Signed Up")),
            make("d", "invalid_message", at=NOW, message={"type": "identify", "userId": "u", "messageId": "d"}),
        ]
    )

    def ids(**kw: object) -> list[str]:
        return [letter.message["messageId"] for letter in store.scan(Filter(**kw))]  # type: ignore[arg-type]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(reason="rejected") == ["b", "a"]
    assert ids(code=523) == ["a"]
    assert ids(event="Signed Up") == ["c"]
    assert ids(type="identify") == ["d"]
    assert ids(destination="wk2") == ["b"]
    assert ids(since=NOW - 200, until=NOW - 100) == ["c", "b"]
    assert ids(limit=2) == ["d", "c"]
    assert ids(reason="rejected", destination="wk1") == ["a"]
    assert ids(ids=(make("a").id, "nope", make("d").id), type="track") == ["a"]
    assert [x.message["messageId"] for x in store.scan(newest_first=False)] == ["a", "b", "c", "d"]


def test_scan_walks_more_than_a_page_including_equal_times(store: DeadLetterStore) -> None:
    # 2500 letters, 1200 of them at the very same time: the walk reads each exactly once, both ways
    letters = [make(f"m{i}", at=NOW if i < 1200 else NOW + i) for i in range(2500)]
    store.put(letters)
    for newest_first in (True, False):
        seen = [letter.id for letter in store.scan(newest_first=newest_first)]
        assert len(seen) == 2500
        assert set(seen) == {letter.id for letter in letters}


def test_scan_survives_removal_while_walking(store: DeadLetterStore) -> None:
    store.put([make(f"m{i}", at=NOW + i) for i in range(2100)])
    seen = []
    for letter in store.scan(newest_first=False):
        store.delete([letter.id])
        seen.append(letter.id)
    assert len(seen) == len(set(seen)) == 2100
    assert store.count() == 0


def test_retention_lazily_on_add_and_by_expire(store: DeadLetterStore) -> None:
    day = 86_400.0
    store.put([make(f"old{i}", at=NOW - 20 * day + i) for i in range(250)])
    assert store.count() == 250  # each add expires relative to its own time: none is old yet
    assert store.oldest() == NOW - 20 * day
    store.put([make("recent", at=NOW - day)])  # lazily drops up to 100 expired letters
    assert store.count() == 151
    assert store.expire(NOW, batch=60) == 150
    assert store.count() == 1
    assert store.counts() == {"rejected": 1}
    assert store.oldest() == NOW - day
    assert store.expire(NOW) == 0


def test_gauges_served_by_the_worker_follow_the_store(store: DeadLetterStore, redis_client: redis.Redis) -> None:
    """The worker's gauges ctrelay_deadletters{reason} and ctrelay_deadletters_oldest_age_seconds read this store."""
    import time

    from prometheus_client import CollectorRegistry

    from worker.delivery.metrics import ClusterCollector

    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(redis_client, store.keys, partitions=1, accounts=[], destinations={}, max_cap=15)
    )
    assert registry.get_sample_value("ctrelay_deadletters_oldest_age_seconds") == 0
    now = time.time()
    store.put([make(f"m{i}", at=now - 100 + i) for i in range(3)] + [make("a", "auth_failed", at=now)])
    assert registry.get_sample_value("ctrelay_deadletters", {"reason": "rejected"}) == 3
    assert registry.get_sample_value("ctrelay_deadletters", {"reason": "auth_failed"}) == 1
    age = registry.get_sample_value("ctrelay_deadletters_oldest_age_seconds")
    assert age is not None
    assert age >= 100
    store.expire(now + store.retention_s - 50)  # the three oldest are past the retention now
    assert registry.get_sample_value("ctrelay_deadletters", {"reason": "rejected"}) is None
