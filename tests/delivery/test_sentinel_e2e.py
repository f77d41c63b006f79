"""Redis Sentinel, end to end: the primary SIGKILLed under load with ``CTRELAY_MIN_REPLICAS=1``.

A primary, a replica and three Sentinels of the test's own; ``ctrelay ingest``, ``ctrelay worker`` (Celery's broker
on the same Sentinels) and the sandbox. A sender posts batches and retries each until it gets a 200, as Segment's
clients do. Mid-run the primary is killed: the Sentinels promote the replica; while the new primary has no replica,
ingest answers 503 (``replication_timeout``: a 200 means "on two machines"); the old primary comes back, the Sentinels
make it the new replica, and 200s resume. Every message that got a 200 must reach the sandbox: none lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from delivery_e2e import Relay, reconcile, wait_for
from redis_topology import MASTER, Topology, redis_binary

from worker.core.settings import Settings
from worker.store.connections import close, connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WRITE_KEY, ACCOUNT, PASSCODE = "wk-sentinel", "ACC-S", "pass-s"


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not on the PATH (the CI machine has it)")
    topology = Topology(tmp_path / "redis", binary)
    yield topology
    topology.stop()


class Sender(threading.Thread):
    """Posts batches of tracks, each batch retried (same messageIds) until a 200; remembers what was accepted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.accepted: list[dict[str, Any]] = []
        self.statuses: dict[str, int] = {}
        self.stopping = threading.Event()
        self.first_refusal: float | None = None
        self.first_200_after_refusal: float | None = None

    def batch(self, number: int) -> list[dict[str, Any]]:
        messages = []
        for n in range(20):
            mid = uuid.uuid4().hex
            messages.append(
                {"type": "track", "event": "Sentinel", "userId": f"user-{(number + n) % 13}", "messageId": mid,
                 "properties": {"mid": mid, "batch": number}}
            )  # fmt: skip
        return messages

    def run(self) -> None:
        number = 0
        with httpx.Client(timeout=10, auth=(WRITE_KEY, "")) as client:
            while not self.stopping.is_set():
                messages = self.batch(number)
                while not self.stopping.is_set():
                    try:
                        answer = client.post(f"{self.url}/v1/batch", json={"batch": messages})
                        status = str(answer.status_code)
                        if answer.status_code == 503:
                            status = f"503 {answer.json().get('code')}"
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == "200":
                        self.accepted += messages
                        if self.first_refusal is not None and self.first_200_after_refusal is None:
                            self.first_200_after_refusal = time.monotonic()
                        break
                    if self.first_refusal is None:
                        self.first_refusal = time.monotonic()
                    time.sleep(0.2)
                number += 1
                time.sleep(0.05)


def test_a_primary_killed_under_load_loses_no_accepted_message(relay: Relay, topology: Topology) -> None:
    primary = topology.data_node()
    replica = topology.data_node(replica_of=primary)
    topology.wait_replicated(primary, 1)
    for _ in range(3):
        topology.sentinel(primary)
    relay.redis_url = primary.url  # REDIS_URL gives only the database and the password in Sentinel mode
    relay.env_extra.update(
        CTRELAY_REDIS_SENTINELS=topology.sentinel_setting,
        CTRELAY_REDIS_SENTINEL_MASTER=MASTER,
        CTRELAY_MIN_REPLICAS="1",
        CTRELAY_MIN_REPLICAS_TIMEOUT_S="0.5",
    )
    relay.start_sandbox("--accounts", f"{ACCOUNT}:{PASSCODE}")
    relay.destinations([{"write_key": WRITE_KEY, "account_id": ACCOUNT, "passcode": PASSCODE}])
    _, url = relay.start_ingest()
    worker = relay.start_worker()
    sender = Sender(url)
    sender.start()
    wait_for(lambda: len(sender.accepted) >= 200, 30, "200 messages accepted before the fault", worker)

    killed_at = time.monotonic()
    primary.kill()
    wait_for(lambda: topology.primary_port() == replica.port, 30, "the Sentinels to promote the replica")
    promoted_s = time.monotonic() - killed_at
    primary.start()  # empty (no persistence): the Sentinels make it a replica of the new primary
    topology.wait_replicated(replica, 1, timeout_s=30)
    wait_for(lambda: sender.first_200_after_refusal is not None, 30, "ingest to answer 200 again", worker)
    accepting_again_s = (sender.first_200_after_refusal or 0) - killed_at
    accepted_before = len(sender.accepted)
    wait_for(lambda: len(sender.accepted) >= accepted_before + 200, 30, "200 more messages after the failover")
    sender.stopping.set()
    sender.join(timeout=15)

    settings = Settings(REDIS_URL=primary.url, redis_sentinels=topology.sentinel_setting, redis_sentinel_master=MASTER)
    client = connect(settings, timeout_s=5)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = reconcile(client, relay, sender.accepted, WRITE_KEY)
            if not state.missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        close(client)
    print(
        f"\nsentinel failover: {len(sender.accepted)} accepted, {len(state.delivered)} delivered, "
        f"{len(state.dead)} dead-lettered, {len(state.missing)} missing, {state.duplicates} duplicates; "
        f"replica promoted {promoted_s:.1f} s after the kill, ingest accepting again after {accepting_again_s:.1f} s; "
        f"answers {dict(sorted(sender.statuses.items()))}"
    )
    assert not state.missing, f"{len(state.missing)} accepted messages never delivered"
    assert not state.dead
    assert any(status.startswith("503") for status in sender.statuses)  # the failover was seen, and refused
    assert worker.process.poll() is None, worker.tail()
