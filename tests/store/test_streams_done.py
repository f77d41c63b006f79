"""Integration (real Redis): what a commit deletes from a stream, and what it never touches."""

from __future__ import annotations

import pytest
import redis

from worker.core.keys import GROUP, Keys
from worker.store.streams import ack_and_delete, ensure_group

pytestmark = pytest.mark.integration


def commit(client: redis.Redis, stream: str, ids: list[bytes]) -> None:
    with client.pipeline(transaction=True) as pipe:
        ack_and_delete(pipe, stream, ids)
        pipe.execute()


def read(client: redis.Redis, stream: str, consumer: str, count: int) -> list[bytes]:
    answer = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in answer[0][1]]


def test_done_entries_go_and_pending_or_unread_ones_stay(redis_client: redis.Redis, keys: Keys) -> None:
    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    added = [redis_client.xadd(stream, {"n": n}) for n in range(12)]
    dead = read(redis_client, stream, "dead-worker", 2)  # read, never acknowledged: pending below the others
    mine = read(redis_client, stream, "worker", 6)  # 6 more read; 4 stay unread
    commit(redis_client, stream, [mine[0], mine[1], mine[3]])  # one destination's; mine[2] is another's, pending
    left = [entry_id for entry_id, _ in redis_client.xrange(stream)]
    assert left == [*dead, mine[2], mine[4], mine[5], *added[8:]]
    assert redis_client.xlen(stream) == 9  # the backlog: unread and pending entries only

    commit(redis_client, stream, [mine[2], mine[4], mine[5]])
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == [*dead, *added[8:]]

    commit(redis_client, stream, dead)  # the dead consumer's, once reclaimed and delivered
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == added[8:]  # unread: never touched
    assert read(redis_client, stream, "worker", 10) == added[8:]
    assert int(redis_client.xpending(stream, GROUP)["pending"]) == 4


def test_nothing_pending_trims_up_to_what_was_read(redis_client: redis.Redis, keys: Keys) -> None:
    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    added = [redis_client.xadd(stream, {"n": n}) for n in range(2500)]
    first = read(redis_client, stream, "worker", 1000)
    second = read(redis_client, stream, "worker", 1000)
    commit(redis_client, stream, second)  # the later batch first: the earlier one is still pending
    assert redis_client.xlen(stream) == 1500
    commit(redis_client, stream, first)
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == added[2000:]
