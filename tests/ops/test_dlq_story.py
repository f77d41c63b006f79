"""The operator's story, end to end with real processes (issue 5).

Segment's Python client sends through ``ctrelay ingest`` to a destination with a wrong passcode; the
``ctrelay worker`` dead-letters its messages as ``auth_failed`` after a short retry window (the
``ctrelay sandbox`` answers 401). The operator fixes the passcode, restarts the worker, looks with
``ctrelay dlq stats`` (and the admin API), runs ``ctrelay dlq replay --all --rate 500``; the sandbox
then holds every message exactly once and the dead-letter store is empty.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
import redis
from delivery_e2e import Relay, settle, tracks, wait_for

from worker.store.deadletters import DeadLetterStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WK, ACC = "wk-story", "ACC-STORY"
MESSAGES = 400
TOKEN = "story-admin-token"


def ctrelay(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a ``ctrelay`` command as the operator does, on a wide terminal."""
    return relay.ctrelay(*args, COLUMNS="160")


def send_with_segments_client(url: str, messages: list[dict[str, Any]]) -> None:
    """Segment's Python client (2.4), unchanged, pointed at ingest."""
    from segment.analytics.client import Client

    errors: list[str] = []
    sender = Client(WK, host=url, on_error=lambda error, _: errors.append(repr(error)), max_retries=2)
    for m in messages:
        sender.track(m["userId"], m["event"], m["properties"], message_id=m["messageId"])
    sender.flush()
    sender.join()
    assert errors == []


def test_wrong_passcode_then_fix_then_replay_delivers_each_message_exactly_once(
    relay: Relay, redis_client: redis.Redis
) -> None:
    relay.start_sandbox("--accounts", f"{ACC}:right")
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "wrong"}])
    _, url = relay.start_ingest(CTRELAY_ADMIN_TOKEN=TOKEN)
    worker = relay.start_worker(CTRELAY_RETRY_WINDOW_S="3")
    messages = tracks(MESSAGES, users=50)
    send_with_segments_client(url, messages)

    # 1. after the retry window, every message is an auth_failed letter; CleverTap got nothing
    state = settle(redis_client, relay, messages, WK, timeout_s=90, proc=worker)
    assert len(state.dead) == MESSAGES
    assert {letter.reason for letter in state.dead.values()} == {"auth_failed"}
    assert {letter.status for letter in state.dead.values()} == {401}
    assert relay.records() == []

    # 2. the operator fixes the passcode and restarts the worker
    worker.stop()
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "right"}])
    worker = relay.start_worker()

    # 3. looks at what failed
    stats = ctrelay(relay, "dlq", "stats")
    assert stats.returncode == 0, stats.stderr
    assert f"Dead letters: {MESSAGES}" in stats.stdout
    assert "auth_failed" in stats.stdout
    assert ACC in stats.stdout  # the destination's name (its account id): tables never show write keys
    counted = orjson.loads(ctrelay(relay, "dlq", "stats", "--json").stdout)
    assert counted["by_reason"] == {"auth_failed": MESSAGES}
    over_http = httpx.get(f"{url}/admin/deadletters/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert over_http.json() == counted
    assert httpx.get(f"{url}/admin/deadletters/stats", timeout=10).status_code == 401

    # 4. replays everything at 500 messages/s
    replay = ctrelay(relay, "dlq", "replay", "--all", "--rate", "500")
    assert replay.returncode == 0, replay.stderr
    assert f"replayed {MESSAGES} letters into the delivery queue" in replay.stderr
    assert DeadLetterStore(redis_client, relay.keys).count() == 0  # each left the store with its XADD

    # 5. the sandbox holds every message exactly once; the store is empty; nothing waits
    def delivered() -> bool:
        return len(relay.records()) >= MESSAGES

    wait_for(delivered, 90, "the replayed messages to reach the sandbox", worker)
    state = settle(redis_client, relay, messages, WK, timeout_s=60, proc=worker)
    mids = Counter(item["record"]["evtData"]["mid"] for item in relay.records())
    assert mids == Counter({m["messageId"]: 1 for m in messages})
    assert state.dead == {}
    assert state.missing == set()
    final = orjson.loads(ctrelay(relay, "dlq", "stats", "--json").stdout)
    assert final["total"] == 0
