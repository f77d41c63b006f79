"""``ctrelay status`` against a real Redis: keys written as delivery and the dead-letter store write them,
read back per partition, account and destination, rendered as tables and as JSON."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner

from worker.cli import app
from worker.cli.status import render
from worker.core.destinations import Destination, Destinations
from worker.core.keys import GROUP, Keys
from worker.ops.status import read_status

pytestmark = pytest.mark.integration

DESTINATIONS = Destinations(
    [
        Destination(write_key="wk_a", account_id="ACC-1", passcode="p"),
        Destination(write_key="wk_b", account_id="ACC-2", passcode="p"),
    ]
)


def fill(client: redis.Redis, keys: Keys, now: float) -> None:
    """Partition 0: 5 entries, 2 read (pending), a lease; partition 1: 3 entries, no group yet; retries; slots."""
    for n in range(5):
        client.xadd(keys.stream(0), {b"w": b"wk_a", b"m": b"{}", b"n": str(n).encode()})
    client.xgroup_create(keys.stream(0), GROUP, id="0")
    client.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=2)
    client.set(keys.lease(0), b"token", px=30_000)
    for n in range(3):
        client.xadd(keys.stream(1), {b"w": b"wk_a", b"m": b"{}", b"n": str(n).encode()})
    client.zadd(keys.retry_due(2), {"due-1": now - 5, "due-2": now - 1, "later-1": now + 600})
    client.zadd(keys.slots("ACC-1"), {"s1": (now + 30) * 1000, "s2": (now + 30) * 1000, "expired": (now - 1) * 1000})
    client.hset(keys.cap("ACC-1"), "cap", "7.5")
    client.set(keys.paused("wk_b"), b"401", px=45_000)
    client.hset(keys.deadletter_counts(), mapping={"rejected": 3, "auth_failed": 1})
    client.zadd(keys.deadletter_times(), {"old": now - 7200, "new": now - 10})


def test_read_status_reads_every_part(redis_client: redis.Redis, keys: Keys) -> None:
    now = time.time()
    fill(redis_client, keys, now)
    status = read_status(redis_client, keys, 4, DESTINATIONS, default_cap=15, now=now)

    p0, p1, p2, p3 = status.partitions
    assert (p0.length, p0.lag, p0.pending, p0.consumers, p0.draining) == (5, 3, 2, 1, True)
    assert (p1.length, p1.lag, p1.pending, p1.draining) == (3, 3, 0, False)  # no group yet: all unread
    assert (p2.retries_due, p2.retries_later) == (2, 1)
    assert (p3.length, p3.lag, p3.pending, p3.retries_due) == (0, 0, 0, 0)
    assert (status.lag, status.pending, status.retries) == (6, 2, 3)

    acc1, acc2 = status.accounts
    assert (acc1.account_id, acc1.in_flight, acc1.cap) == ("ACC-1", 2, 7.5)  # the expired slot is not counted
    assert (acc2.account_id, acc2.in_flight, acc2.cap) == ("ACC-2", 0, 15.0)

    wk_a, wk_b = status.destinations
    assert wk_a.paused_for_s is None
    assert wk_b.paused_for_s is not None
    assert 0 < wk_b.paused_for_s <= 45

    assert status.deadletters == {"rejected": 3, "auth_failed": 1}
    assert status.oldest_deadletter_age_s == pytest.approx(7200, abs=1)
    assert status.as_dict()["totals"] == {"lag": 6, "pending": 2, "retries": 3, "backlog": 11, "deadletters": 4}


def test_unread_is_the_length_less_the_pending_entries(redis_client: redis.Redis, keys: Keys) -> None:
    """Redis's own lag is not used (it reports none once an unread entry is deleted, a wrong one after a restart)."""
    ids = [redis_client.xadd(keys.stream(0), {b"n": str(n).encode()}) for n in range(5)]
    redis_client.xgroup_create(keys.stream(0), GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {keys.stream(0): ">"}, count=1)
    redis_client.xdel(keys.stream(0), ids[3])
    status = read_status(redis_client, keys, 1, Destinations([]), default_cap=15)
    (p0,) = status.partitions
    assert (p0.length, p0.pending, p0.lag, p0.unread) == (4, 1, 3, 3)
    assert (status.lag, status.backlog) == (3, 4)


def test_render_shows_busy_partitions_accounts_and_letters(redis_client: redis.Redis, keys: Keys) -> None:
    now = time.time()
    fill(redis_client, keys, now)
    status = read_status(redis_client, keys, 4, DESTINATIONS, default_cap=15, now=now)
    console = Console(record=True, width=140)
    for part in render(status):
        console.print(part)
    text = console.export_text()
    assert "backlog 11" in text
    assert "lag 6" in text
    assert "1 idle partition(s) not shown" in text
    assert "ACC-1" in text
    assert "paused (401/403)" in text
    assert "rejected" in text
    assert "oldest: 2.0h ago" in text
    console = Console(record=True, width=140)
    for part in render(status, show_all=True):
        console.print(part)
    assert "idle partition" not in console.export_text()


def test_suppressed_ids_per_destination(redis_client: redis.Redis, keys: Keys) -> None:
    """Deleted users' ids held per destination, written as the operator's deletions write them."""
    from worker.ops.users import delete_user, unsuppress
    from worker.store.producer import Producer

    wk_a = DESTINATIONS["wk_a"]
    producer = Producer(keys, 4, dedup_window=600)
    for ids in ({"user_id": "u1"}, {"anonymous_id": "a1"}, {"user_id": "u2"}):
        delete_user(redis_client, keys, producer, wk_a, window_s=3600, via="cli", **ids)
    status = read_status(redis_client, keys, 4, DESTINATIONS, default_cap=15)
    assert [(d.write_key, d.suppressed) for d in status.destinations] == [("wk_a", 3), ("wk_b", 0)]
    assert [d["suppressed"] for d in status.as_dict()["destinations"]] == [3, 0]
    console = Console(record=True, width=160)
    for part in render(status):
        console.print(part)
    assert "suppressed ids" in console.export_text()

    assert unsuppress(redis_client, keys, wk_a, user_id="u2") == 1
    status = read_status(redis_client, keys, 4, DESTINATIONS, default_cap=15)
    assert [d.suppressed for d in status.destinations] == [2, 0]  # the version field is not an id


def test_status_command_prints_json(redis_url: str, redis_client: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    fill(redis_client, keys, time.time())
    destinations = tmp_path / "d.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk_a"\naccount_id = "ACC-1"\npasscode = "p"\n')
    env = {
        "REDIS_URL": redis_url,
        "CTRELAY_REDIS_PREFIX": keys.prefix,
        "CTRELAY_PARTITIONS": "3",
        "CTRELAY_DESTINATIONS": str(destinations),
    }
    result = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["totals"] == {"lag": 6, "pending": 2, "retries": 3, "backlog": 11, "deadletters": 4}
    assert [a["in_flight"] for a in data["accounts"]] == [2]
    result = CliRunner().invoke(app, ["status", "--all"], env=env)
    assert result.exit_code == 0, result.output
    assert "Queue by partition" in result.output


def test_status_command_says_when_redis_does_not_answer(tmp_path: Path) -> None:
    from worker.cli.embedded import free_port

    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk"\naccount_id = "ACC"\npasscode = "p"\n')
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "CTRELAY_DESTINATIONS": str(destinations)}
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 1
    assert "does not answer" in result.output


def test_status_command_refuses_a_bad_destinations_file(tmp_path: Path) -> None:
    env = {"CTRELAY_DESTINATIONS": str(tmp_path / "missing.toml")}
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'missing.toml'}: destinations file not found"
