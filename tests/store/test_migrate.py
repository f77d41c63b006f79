"""``ctrelay migrate`` against a Redis holding data written by the release before hash tags.

The old data is written by that release's own code: commit :data:`LEGACY_COMMIT` (the last one with the untagged
layout) is extracted with ``git archive`` and run in a subprocess: a stream with entries read and not acknowledged
(pending), a retry schedule, dead letters, a suppression, an account's cap and slot. Then today's code migrates it,
and what it moved must be where today's code reads it, pending state included; a second run moves nothing; a held
lease refuses it; a stream already in use by today's ingest gets the old entries appended.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from worker.core.errors import ConfigError
from worker.core.keys import GROUP, Envelope, Keys, LegacyKeys, partition_of
from worker.store.deadletters import DeadLetterStore
from worker.store.migrate import migrate
from worker.store.producer import Entry, Producer
from worker.store.retries import RetrySchedule
from worker.store.suppressions import Suppressions

pytestmark = pytest.mark.integration

LEGACY_COMMIT = "9eb7d65"
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
WINDOW = 600

WRITER = """
import sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not today's editable install
sys.path.insert(0, sys.argv[3])
import redis
import worker
assert worker.__file__.startswith(sys.argv[3]), worker.__file__
from worker.core.keys import Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter
from worker.store.producer import Producer
from worker.store.retries import RetryItem, RetrySchedule
from worker.store.slots import AccountSlots
from worker.store.streams import ensure_groups
from worker.store.suppressions import Suppressions

client = redis.Redis.from_url(sys.argv[1])
keys, now = Keys(sys.argv[2]), time.time()
producer = Producer(keys, 4, 600)
ensure_groups(client, keys, 4)
messages = [{"type": "track", "event": "E", "userId": f"u{n % 5}", "messageId": f"m{n}"} for n in range(40)]
with client.pipeline(transaction=False) as pipe:
    producer.add(pipe, [producer.entry("wk", m) for m in messages])
    pipe.execute()
for p in range(4):
    client.xreadgroup("workers", "old-worker", {keys.stream(p): ">"}, count=2)  # read, never acknowledged
item = RetryItem("wk\\nr1", "wk", {"messageId": "r1", "userId": "u1"}, [{"type": "event"}], 2, now, now, "http_5xx")
with client.pipeline(transaction=True) as pipe:
    RetrySchedule(client, keys, 1).put(pipe, item, now + 60)
    pipe.execute()
DeadLetterStore(client, keys).put(
    Letter.of("wk", {"messageId": f"d{n}", "userId": "u2"}, "rejected", now=now, code=512) for n in range(3)
)
suppressions = Suppressions(client, keys, 3600, lambda: now)
with client.pipeline(transaction=True) as pipe:
    suppressions.add(pipe, "wk", {"type": "delete", "identity": ["gone"], "guid": []}, now, "cli")
    pipe.execute()
slots = AccountSlots(client, keys, max_cap=15)
slots.record("ACC", throttled=True)
slots.try_acquire("ACC")
for message_id in ("old1", "old2"):  # the old layout's dedup markers: a key per accepted message
    client.set(keys.dedup("wk", message_id), "1", ex=600)
"""


@pytest.fixture(scope="module")
def legacy_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release before hash tags, extracted from git (its ``worker`` package only)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LEGACY_COMMIT, "worker"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"git cannot extract commit {LEGACY_COMMIT}: {archive.stderr.decode()[-300:]}")
    target = tmp_path_factory.mktemp("legacy")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def write_legacy(legacy_code: Path, redis_url: str, prefix: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, redis_url, prefix, str(legacy_code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_migrate_moves_what_the_old_layout_holds(
    legacy_code: Path, redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    write_legacy(legacy_code, redis_url, keys.prefix)
    legacy = LegacyKeys(keys.prefix)
    assert redis_client.exists(legacy.stream(0))  # the old layout
    assert not redis_client.exists(keys.stream(0))
    old_ids = {p: [e for e, _ in redis_client.xrange(legacy.stream(p))] for p in range(PARTITIONS)}

    done = migrate(redis_client, keys, PARTITIONS, WINDOW)

    read = {p: min(2, len(ids)) for p, ids in old_ids.items()}  # what the old worker read of each stream
    assert sum(read.values()) > PARTITIONS
    assert (done.streams, done.entries, done.pending, done.appended) == (PARTITIONS, 40, sum(read.values()), 0)
    for p in range(PARTITIONS):
        assert [e for e, _ in redis_client.xrange(keys.stream(p))] == old_ids[p]  # same entries, same ids
        pending = redis_client.xpending_range(keys.stream(p), GROUP, "-", "+", 10)
        assert [row["consumer"] for row in pending] == [b"old-worker"] * read[p]  # reclaimed as before
        assert not redis_client.exists(legacy.stream(p))
    users = {Envelope.decode(f).message["userId"] for _, f in redis_client.xrange(keys.stream(partition_of("u1", 4)))}
    assert "u1" in users
    [item] = RetrySchedule(redis_client, keys, 1).due(time.time() + 120, 10)
    assert (item.id, item.attempts, done.retry_items) == ("wk\nr1", 2, 1)
    store = DeadLetterStore(redis_client, keys)
    assert (store.count(), store.counts(), done.letters) == (3, {"rejected": 3}, 3)
    active = Suppressions(redis_client, keys, 0, time.time).active("wk", time.time())
    assert [s.field for s in active] == ["i:gone"]
    assert done.suppressions == 1
    assert float(redis_client.hget(keys.cap("ACC"), "cap") or 0) < 15
    assert done.caps == 1
    assert done.removed == 1  # the old slot
    assert not [k for k in redis_client.scan_iter(match=f"{keys.prefix}:*") if b"{" not in k and b":dlq:" in k]

    assert done.dedup == 2  # the old markers converted: a retry of a message accepted before is still a duplicate
    producer = Producer(keys, PARTITIONS, WINDOW)
    retry = [producer.entry("wk", {"type": "track", "userId": "u3", "messageId": m}) for m in ("old1", "old2", "new")]
    written = asyncio.run(_enqueue(redis_url, producer, retry))
    assert [entry_id is not None for entry_id in written] == [False, False, True]
    assert not list(redis_client.scan_iter(match=f"{keys.prefix}:dedup:*"))

    again = migrate(redis_client, keys, PARTITIONS, WINDOW)
    assert not again.moved_anything


async def _enqueue(redis_url: str, producer: Producer, entries: list[Entry]) -> list[bytes | None]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return await producer.enqueue(client, entries)
    finally:
        await client.aclose()


def test_migrate_refuses_while_a_worker_holds_a_lease(
    legacy_code: Path, redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    write_legacy(legacy_code, redis_url, keys.prefix)
    redis_client.set(LegacyKeys(keys.prefix).lease(2), "a-worker", px=30_000)
    with pytest.raises(ConfigError, match="partitions 2"):
        migrate(redis_client, keys, PARTITIONS, WINDOW)
    assert redis_client.exists(LegacyKeys(keys.prefix).stream(0))  # nothing moved


def test_a_stream_already_in_use_gets_the_old_entries_appended(
    legacy_code: Path, redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    write_legacy(legacy_code, redis_url, keys.prefix)
    redis_client.xadd(keys.stream(0), {b"w": b"wk", b"m": b'{"messageId":"new","userId":"x"}'})  # today's ingest
    redis_client.hset(keys.deadletters(), "other", b"{}")  # a letter written by today's worker
    old = redis_client.xlen(LegacyKeys(keys.prefix).stream(0))

    done = migrate(redis_client, keys, PARTITIONS, WINDOW)

    assert done.appended == old
    assert any("already held entries" in note for note in done.notes)
    assert redis_client.xlen(keys.stream(0)) == old + 1
    assert not redis_client.exists(LegacyKeys(keys.prefix).stream(0))
    assert done.letters == 3
    assert redis_client.hlen(keys.deadletters()) == 4
    assert not any(redis_client.exists(key) for key in LegacyKeys(keys.prefix).deadletter_keys())


def test_the_command_prints_what_it_moved_and_then_that_nothing_is_left(
    legacy_code: Path, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    write_legacy(legacy_code, redis_url, keys.prefix)
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk"\naccount_id = "ACC"\npasscode = "p"\n')
    env = dict(
        os.environ, REDIS_URL=redis_url, CTRELAY_REDIS_PREFIX=keys.prefix, CTRELAY_PARTITIONS=str(PARTITIONS),
        CTRELAY_DESTINATIONS=str(destinations),
    )  # fmt: skip

    def migrate_command(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from worker.cli import app; app(prog_name='ctrelay')", "migrate"],
            env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    first = migrate_command()
    assert first.returncode == 0, first.stderr
    assert "streams: 4 moved (40 entries" in first.stdout
    assert "dead letters: 3 moved" in first.stdout
    assert first.stdout.rstrip().endswith("migrated")
    second = migrate_command()
    assert second.returncode == 0, second.stderr
    assert second.stdout.rstrip().endswith("nothing to migrate: the data is in today's layout")
    refused = migrate_command(CTRELAY_REDIS_CLUSTER="true", CTRELAY_BROKER_URL="amqp://x")
    assert refused.returncode == 2
    assert "error:" in refused.stderr
    assert "Traceback" not in refused.stderr
