"""Integration (real Redis): what a commit deletes from a stream, and what it never touches."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis

from worker.core.keys import GROUP, Keys
from worker.store.scripts import PipelineScript
from worker.store.streams import COMMIT_HELD, ack_and_delete, ensure_group, queue_commit_held

pytestmark = pytest.mark.integration
LEASE = "lease-token"


def commit_multi(client: redis.Redis, stream: str, ids: list[bytes]) -> None:
    with client.pipeline(transaction=True) as pipe:
        ack_and_delete(pipe, stream, ids)
        pipe.execute()


def commit_held(client: redis.Redis, stream: str, ids: list[bytes], token: str = LEASE) -> int:
    """The commit under the partition's lease (``<stream>:lease``, set by the caller), on a plain pipeline."""
    with client.pipeline(transaction=False) as pipe:
        keys, args = queue_commit_held(pipe, stream, (f"{stream}:lease", token, 30_000), ids)
        (answer,) = pipe.execute(raise_on_error=False)
    return int(COMMIT_HELD.answer(client, answer, keys, args))


@pytest.fixture(params=["multi", "held"])
def commit(request: pytest.FixtureRequest, redis_client: redis.Redis, keys: Keys) -> Callable[..., object]:
    """Both forms of a commit delete alike: the MULTI of :func:`ack_and_delete`, the script under the lease."""
    if request.param == "multi":
        return commit_multi
    redis_client.set(f"{keys.stream(0)}:lease", LEASE, px=30_000)
    return commit_held


def read(client: redis.Redis, stream: str, consumer: str, count: int) -> list[bytes]:
    answer = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in answer[0][1]]


def test_done_entries_go_and_pending_or_unread_ones_stay(
    redis_client: redis.Redis, keys: Keys, commit: Callable[..., object]
) -> None:
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


def test_nothing_pending_trims_up_to_what_was_read(
    redis_client: redis.Redis, keys: Keys, commit: Callable[..., object]
) -> None:
    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    added = [redis_client.xadd(stream, {"n": n}) for n in range(2500)]
    first = read(redis_client, stream, "worker", 1000)
    second = read(redis_client, stream, "worker", 1000)
    commit(redis_client, stream, second)  # the later batch first: the earlier one is still pending
    assert redis_client.xlen(stream) == 1500
    commit(redis_client, stream, first)
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == added[2000:]


def test_ids_of_other_lengths_are_ordered_as_numbers(
    redis_client: redis.Redis, keys: Keys, commit: Callable[..., object]
) -> None:
    """The held commit compares ids with the lowest pending one (``12-5``) as strings where they have its shape
    (``12-7``, ``13-1``) and as numbers otherwise: ``12-12`` and ``13-10`` are above it, ``9-10`` and ``11-10`` below,
    whatever their order as strings."""
    stream = keys.stream(0)
    ensure_group(redis_client, stream)
    below = ["9-1", "9-10", "10-3", "11-10"]
    above = ["12-7", "12-12", "13-1", "13-10", "100-1"]
    for entry_id in [*below, "12-5", *above]:
        redis_client.xadd(stream, {"n": entry_id}, id=entry_id)
    mine = read(redis_client, stream, "worker", len(below))
    assert read(redis_client, stream, "dead-worker", 1) == [b"12-5"]  # pending: the bound
    mine += read(redis_client, stream, "worker", len(above))
    commit(redis_client, stream, mine)
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == [b"12-5"]
    if commit is commit_held:  # what its XDEL took: the ones above the bound, none of those trimmed below it
        redis_client.xadd(stream, {"n": "again"}, id="100-2")
        again = read(redis_client, stream, "worker", 1)
        assert commit_held(redis_client, stream, [entry_id.encode() for entry_id in below] + again) == 1


def test_the_held_commit_writes_nothing_without_the_lease_and_renews_it_with(
    redis_client: redis.Redis, keys: Keys
) -> None:
    stream, lease = keys.stream(0), f"{keys.stream(0)}:lease"
    ensure_group(redis_client, stream)
    for n in range(5):
        redis_client.xadd(stream, {"n": n})
    ids = read(redis_client, stream, "worker", 5)
    assert commit_held(redis_client, stream, ids) == -1  # no lease at all
    redis_client.set(lease, "another-drain", px=30_000)
    assert commit_held(redis_client, stream, ids) == -1  # taken over
    assert redis_client.xlen(stream) == 5
    assert int(redis_client.xpending(stream, GROUP)["pending"]) == 5
    assert redis_client.get(lease) == b"another-drain"
    assert 0 < redis_client.pttl(lease) <= 30_000
    redis_client.set(lease, LEASE, px=1_000)
    assert commit_held(redis_client, stream, ids[:2]) == 0
    assert redis_client.pttl(lease) > 1_000  # renewed to the TTL it was given
    assert [entry_id for entry_id, _ in redis_client.xrange(stream)] == ids[2:]
    assert int(redis_client.xpending(stream, GROUP)["pending"]) == 3


def test_a_pipeline_script_redis_does_not_know_yet_runs_by_its_source(redis_client: redis.Redis) -> None:
    """As after a restart or a failover (NOSCRIPT): the answer is the script's, and the script is loaded after it."""
    script = PipelineScript(f"return {{ARGV[1], redis.call('EXISTS', KEYS[1])}} -- {uuid.uuid4().hex}")
    for _ in range(2):
        with redis_client.pipeline(transaction=False) as pipe:
            pipe.ping()
            script.queue(pipe, ["no-such-key"], ["x"])
            answers = pipe.execute(raise_on_error=False)
        assert script.answer(redis_client, answers[1], ["no-such-key"], ["x"]) == [b"x", 0]
        assert redis_client.script_exists(script.sha) == [True]
