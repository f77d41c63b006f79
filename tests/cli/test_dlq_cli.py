"""``ctrelay dlq`` subcommands, run in-process against a real Redis: tables, JSON, filters, confirmations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner

from worker.cli import app
from worker.core.keys import Envelope, Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter

pytestmark = pytest.mark.integration

PARTITIONS = 4


def message(i: int, event: str = "Product Viewed", kind: str = "track") -> dict[str, Any]:
    base: dict[str, Any] = {"type": kind, "userId": f"u{i}", "messageId": f"m{i}", "timestamp": "2027-01-15T08:00:00Z"}
    return {**base, "event": event, "properties": {"n": i}} if kind == "track" else {**base, "traits": {"n": i}}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, prefix: str) -> Path:
    destinations = tmp_path / "destinations.toml"
    destinations.write_text(
        '[[destinations]]\nwrite_key = "wk1"\naccount_id = "ACC-1"\npasscode = "top-secret-1"\n'
        '[[destinations]]\nwrite_key = "wk2"\naccount_id = "ACC-2"\npasscode = "top-secret-2"\n'
    )
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CTRELAY_REDIS_PREFIX", prefix)
    monkeypatch.setenv("CTRELAY_DESTINATIONS", str(destinations))
    monkeypatch.setenv("CTRELAY_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys, env: Path) -> DeadLetterStore:
    store = DeadLetterStore(redis_client, keys)
    now = time.time()
    store.put(
        [Letter.of("wk1", message(i), "rejected", code=523, error="missing identity", status=200, now=now - 3600 - i)
         for i in range(3)]
        + [Letter.of("wk2", message(10 + i, "Signed Up"), "auth_failed", status=401, error="HTTP 401", attempts=7,
                     now=now - 60 - i) for i in range(2)]
        + [Letter.of("wk1", message(20, kind="identify"), "invalid_message", error="bad", now=now)]
    )  # fmt: skip
    return store


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, ["dlq", *args], input=input)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def streamed(client: redis.Redis, keys: Keys) -> list[str]:
    ids = []
    for partition in range(PARTITIONS):
        ids += [Envelope.decode(f).message["messageId"] for _, f in client.xrange(keys.stream(partition))]
    return sorted(ids)


def test_stats_table_and_json(store: DeadLetterStore) -> None:
    result = run("stats")
    assert result.exit_code == 0, result.output
    assert "Dead letters: 6" in result.stdout
    for text in ("rejected", "523", "Product Viewed", "ACC-1", "auth_failed", "Signed Up", "ACC-2", "(identify)"):
        assert text in result.stdout
    assert "wk1" not in result.stdout  # destinations by name (the account id by default), not by write key
    data = orjson.loads(run("stats", "--json").stdout)
    assert data["by_reason"] == {"rejected": 3, "auth_failed": 2, "invalid_message": 1}
    assert {"reason": "auth_failed", "code": None, "event": "Signed Up", "destination": "wk2", "count": 2} in data[
        "groups"
    ]
    assert orjson.loads(run("stats", "--json", "--reason", "rejected", "--since", "2h").stdout)["total"] == 3
    assert orjson.loads(run("stats", "--json", "--until", "30m").stdout)["total"] == 3


def test_list_table_json_and_filters(store: DeadLetterStore) -> None:
    result = run("list")
    assert result.exit_code == 0, result.output
    for letter in store.scan():
        assert letter.id in result.stdout
    assert "missing identity" in result.stdout
    assert "HTTP 401" in result.stdout
    rows = json_lines(run("list", "--json").stdout)
    assert [r["message"]["messageId"] for r in rows] == ["m20", "m10", "m11", "m0", "m1", "m2"]  # newest first
    assert rows[1]["attempts"] == 7
    assert rows[1]["status"] == 401

    def ids(*options: str) -> list[str]:
        return [r["message"]["messageId"] for r in json_lines(run("list", "--json", *options).stdout)]

    assert ids("--reason", "auth_failed") == ["m10", "m11"]
    assert ids("--code", "523") == ["m0", "m1", "m2"]
    assert ids("--event", "Signed Up") == ["m10", "m11"]
    assert ids("--type", "identify") == ["m20"]
    assert ids("--destination", "wk2") == ["m10", "m11"]
    assert ids("--since", "10m") == ["m20", "m10", "m11"]
    assert ids("--until", "30m", "--limit", "2") == ["m0", "m1"]
    assert ids("--since", str(int(time.time()) - 7200), "--until", "30m", "--reason", "rejected") == ["m0", "m1", "m2"]


def test_bad_filter_is_a_clear_error(store: DeadLetterStore) -> None:
    result = run("list", "--reason", "broken")
    assert result.exit_code == 2
    assert "reason 'broken': expected one of" in result.stderr
    result = run("stats", "--since", "last tuesday")
    assert result.exit_code == 2
    assert "ISO 8601" in result.stderr


def test_show_prints_the_letter_and_todays_transform(store: DeadLetterStore) -> None:
    letter = next(store.scan(), None)
    assert letter is not None
    result = run("show", letter.id)
    assert result.exit_code == 0, result.output
    assert "today's transform" in result.stdout
    assert '"messageId": "m20"' in result.stdout
    data = orjson.loads(run("show", letter.id, "--json").stdout)
    assert data["letter"] == letter.to_dict()
    assert data["transform"]["outcome"] == "records"
    assert data["transform"]["records"][0]["type"] == "profile"
    assert "top-secret" not in result.stdout
    missing = run("show", "0000")
    assert missing.exit_code == 1
    assert "no dead letter '0000'" in missing.stderr


def test_replay_ids_all_filters_and_dry_run(store: DeadLetterStore, redis_client: redis.Redis, keys: Keys) -> None:
    assert run("replay").exit_code == 2
    dry = run("replay", "--all", "--dry-run", "--reason", "auth_failed")
    assert dry.exit_code == 0, dry.output
    plans = json_lines(dry.stdout)
    assert sorted(p["records"][0]["evtName"] for p in plans) == ["Signed Up", "Signed Up"]
    assert "would replay 2 letters" in dry.stderr
    assert store.count() == 6
    assert streamed(redis_client, keys) == []

    one = next(store.scan()).id  # the newest: m20
    result = run("replay", one, "--rate", "0")
    assert result.exit_code == 0, result.output
    assert "replayed 1 letters" in result.stderr
    assert streamed(redis_client, keys) == ["m20"]

    result = run("replay", "--all", "--destination", "wk2", "--rate", "1000")
    assert "replayed 2 letters" in result.stderr
    result = run("replay", "--all")
    assert "replayed 3 letters" in result.stderr
    assert streamed(redis_client, keys) == ["m0", "m1", "m10", "m11", "m2", "m20"]
    assert store.count() == 0


def test_purge_asks_unless_yes(store: DeadLetterStore) -> None:
    assert run("purge").exit_code == 2
    refused = run("purge", "--all", "--reason", "rejected", input="n\n")
    assert refused.exit_code == 1
    assert "Delete 3 dead letters for good?" in refused.stderr
    assert store.count() == 6
    confirmed = run("purge", "--all", "--reason", "rejected", input="y\n")
    assert confirmed.exit_code == 0
    assert "deleted 3 dead letters" in confirmed.stderr
    letter = next(store.scan())
    assert "deleted 1 dead letters" in run("purge", letter.id, "--yes").stderr
    assert "deleted 2 dead letters" in run("purge", "--all", "-y").stderr
    assert store.count() == 0


def test_export_then_import(store: DeadLetterStore, env: Path) -> None:
    exported = run("export", "--destination", "wk1")
    assert exported.exit_code == 0
    assert "exported 4 dead letters" in exported.stderr
    lines = json_lines(exported.stdout)
    assert [line["message"]["messageId"] for line in lines] == ["m2", "m1", "m0", "m20"]  # oldest first
    target = env / "letters.jsonl"
    assert "to " + str(target) in run("export", "--output", str(target)).stderr
    assert len(target.read_text().splitlines()) == 6
    before = {letter.id: letter for letter in store.scan()}
    assert "deleted 6" in run("purge", "--all", "--yes").stderr
    result = run("import", str(target))
    assert result.exit_code == 0, result.output
    assert "imported 6 dead letters" in result.stderr
    assert {letter.id: letter for letter in store.scan()} == before
    broken = env / "broken.jsonl"
    broken.write_text(target.read_text().splitlines()[0] + "\n{oops\n")
    result = run("import", str(broken))
    assert result.exit_code == 1
    assert "imported 1 dead letters" in result.stderr
    assert "refused line 2" in result.stderr
    assert run("import", str(env / "nope.jsonl")).exit_code == 2


def test_retention_applies_when_an_operator_looks(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    monkeypatch.setenv("CTRELAY_DEADLETTER_RETENTION", "1800")  # the three rejected letters are an hour old
    data = orjson.loads(run("stats", "--json").stdout)
    assert data["total"] == 3
    assert data["by_reason"] == {"auth_failed": 2, "invalid_message": 1}
    assert store.count() == 3


def test_a_redis_that_never_answers_is_an_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that accepts the connection and then says nothing makes the command fail, not hang."""
    import socket

    from worker.cli import context as cli_context

    monkeypatch.setattr(cli_context, "REDIS_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing is ever read or answered
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        result = run("stats")
    assert result.exit_code == 2
    assert "Redis (redis://127.0.0.1:" in result.stderr
    assert "Timeout" in result.stderr
