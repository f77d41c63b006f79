"""A replay killed half-way (SIGKILL, Ctrl-C or SIGTERM) and run again: every letter in the queue exactly once,
none left.

Real processes: ``ctrelay dlq replay --all --rate N`` as an operator runs it, against a real Redis; the
test reconciles the partition streams against the letters written. The replay is also started with SIGINT
ignored (as a background job, ``nohup`` or a CI wrapper starts it, and as this test's own process may have
been started): the CLI handles SIGINT itself, so it stops the same way whatever it inherited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from worker.core.keys import Envelope, Keys
from worker.store.deadletters import DeadLetterStore
from worker.store.letters import Letter

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 4
LETTERS = 3000
CTRELAY = str(Path(sys.executable).with_name("ctrelay"))


def fill(store: DeadLetterStore) -> set[str]:
    now = time.time()
    store.put(
        Letter.of("wk1", {"type": "track", "event": "E", "userId": f"u{i % 97}", "messageId": f"m{i}"}, "auth_failed",
                  status=401, now=now - LETTERS + i)
        for i in range(LETTERS)
    )  # fmt: skip
    return {f"m{i}" for i in range(LETTERS)}


def queued(client: redis.Redis, keys: Keys) -> Counter[str]:
    seen: Counter[str] = Counter()
    for partition in range(PARTITIONS):
        for _, fields in client.xrange(keys.stream(partition)):
            seen[Envelope.decode(fields).message["messageId"]] += 1
    return seen


@pytest.fixture
def env(tmp_path: Path, redis_url: str, prefix: str) -> dict[str, str]:
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[[destinations]]\nwrite_key = "wk1"\naccount_id = "ACC-1"\npasscode = "p"\n')
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "CTRELAY_REDIS_PREFIX": prefix,
        "CTRELAY_DESTINATIONS": str(destinations),
        "CTRELAY_PARTITIONS": str(PARTITIONS),
    }


IGNORING_SIGINT = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]
"""A prefix that starts a command with SIGINT ignored (inherited across exec, as from a background job)."""


def replay(env: dict[str, str], log: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen[bytes]:
    prefix = IGNORING_SIGINT if sigint_ignored else []
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*prefix, CTRELAY, "dlq", "replay", "--all", *args], env=env, stdout=subprocess.DEVNULL, stderr=sink
        )


def interrupt_half_way(process: subprocess.Popen[bytes], store: DeadLetterStore, sig: signal.Signals, log: Path) -> int:
    """Send ``sig`` once the replay has moved some letters but not all; returns the letters left then."""
    try:
        deadline = time.monotonic() + 60
        while store.count() > LETTERS * 2 // 3:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the replay made no progress"
            time.sleep(0.02)
        process.send_signal(sig)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return store.count()


@pytest.mark.parametrize(
    "case",
    [(signal.SIGKILL, False), (signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGKILL", "SIGINT", "SIGINT-ignored-at-start", "SIGTERM"],
)
def test_replay_interrupted_then_run_again_queues_each_letter_exactly_once(
    env: dict[str, str], redis_client: redis.Redis, keys: Keys, case: tuple[signal.Signals, bool], tmp_path: Path
) -> None:
    sig, sigint_ignored = case  # the signal sent half-way; whether the replay was started with SIGINT ignored
    store = DeadLetterStore(redis_client, keys)
    expected = fill(store)
    log = tmp_path / "replay.log"
    first = replay(env, log, "--rate", "2000", sigint_ignored=sigint_ignored)
    left = interrupt_half_way(first, store, sig, log)
    assert 0 < left < LETTERS  # really half-way
    if sig != signal.SIGKILL:
        assert first.returncode == 128 + sig
        assert "nothing is lost" in log.read_text()
    # nothing lost at the interruption: every letter is either still in the store or queued, not both
    in_store = {letter.message["messageId"] for letter in store.scan()}
    in_queue = queued(redis_client, keys)
    assert in_store | set(in_queue) == expected
    assert not in_store & set(in_queue)
    assert max(in_queue.values()) == 1

    second = subprocess.run(
        [CTRELAY, "dlq", "replay", "--all", "--rate", "0"], env=env, capture_output=True, timeout=120, check=False
    )
    assert second.returncode == 0, second.stderr
    assert f"replayed {left} letters".encode() in second.stderr
    assert queued(redis_client, keys) == dict.fromkeys(expected, 1)
    assert store.count() == 0
    assert store.counts() == {}
