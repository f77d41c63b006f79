"""Redis Cluster, end to end: a real 3-primary cluster of the test's own, ``CTRELAY_REDIS_CLUSTER=true``.

``ctrelay ingest``, ``ctrelay worker`` and the sandbox on the cluster, Celery's broker on RabbitMQ (127.0.0.1:5672)
or on a plain Redis (127.0.0.1:6379, under the test's prefix): kombu has no cluster transport.

- the mixed workload of the delivery tests (segment-analytics-python, two write keys, two accounts) is delivered
  exactly, in per-user order; the relay's keys live on all three primaries (each stream on the node that serves its
  slot, by CLUSTER KEYSLOT and CLUSTER SLOTS); the operator commands answer in cluster mode;
- one primary SIGKILLed under load and started again (its AOF is written on every command): every message that got
  a 200 is delivered, none lost, per-user order kept; the test prints how long delivery took to recover.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from delivery_e2e import Relay, reconcile, wait_for
from redis_topology import Cluster, cluster_binaries
from test_delivery_mixed_e2e import ACCOUNTS, RABBITMQ, deliver_mixed_workload, rabbitmq_answers

from worker.core.settings import Settings
from worker.store.connections import close, connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

WRITE_KEY, ACCOUNT, PASSCODE = "wk-cluster", "ACC-C", "pass-c"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    binaries = cluster_binaries()
    if binaries is None:
        pytest.skip("redis-server or redis-cli is not on the PATH (.ci/run installs them)")
    cluster = Cluster(tmp_path / "cluster", *binaries)
    try:
        cluster.start(3)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["rabbitmq", "redis"])
def broker(request: pytest.FixtureRequest, relay: Relay, cluster: Cluster, redis_url: str) -> str:
    """The relay on the cluster, with Celery's broker on RabbitMQ or on the plain Redis (the test's prefix)."""
    if request.param == "rabbitmq" and not rabbitmq_answers():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
    relay.redis_url = cluster.url
    relay.env_extra.update(
        CTRELAY_REDIS_CLUSTER="true", CTRELAY_BROKER_URL=RABBITMQ if request.param == "rabbitmq" else redis_url
    )
    return str(request.param)


def cluster_client(cluster: Cluster) -> Any:
    return connect(Settings(REDIS_URL=cluster.url, redis_cluster=True), timeout_s=5)


def assert_spread(cluster: Cluster, relay: Relay) -> None:
    """Every primary holds keys of the relay; each partition stream lives on the node serving its slot."""
    owners = {relay.keys.stream(p): cluster.owner(relay.keys.stream(p)) for p in range(relay.partitions)}
    for stream, node in owners.items():
        assert stream in cluster.keys_on(node, relay.prefix), (stream, node.port)
    assert {node.port for node in owners.values()} == {node.port for node in cluster.nodes}
    for node in cluster.nodes:
        assert cluster.keys_on(node, relay.prefix), f"no key of the relay on {node.port}"


def test_mixed_workload_on_a_cluster(relay: Relay, cluster: Cluster, broker: str) -> None:
    relay.env_extra["CTRELAY_ADMIN_TOKEN"] = "admin-secret"
    relay.start_sandbox("--accounts", ",".join(f"{acc}:{pw}" for acc, pw in ACCOUNTS.values()))
    relay.destinations([{"write_key": wk, "account_id": acc, "passcode": pw} for wk, (acc, pw) in ACCOUNTS.items()])
    _, url = relay.start_ingest()
    worker = relay.start_worker("-n", f"{relay.prefix}@%h")  # its own name: RabbitMQ is shared
    deliver_mixed_workload(relay, url, worker)
    assert_spread(cluster, relay)
    user = "wk-a-user-0"
    commands = [
        ["status", "--json"], ["partitions"], ["dlq", "list"], ["check"],
        ["users", "delete", "--destination", "wk-a", "--user-id", user], ["users", "list", "--destination", "wk-a"],
    ]  # fmt: skip
    for command in commands:
        done = relay.ctrelay(*command, timeout_s=60)
        assert done.returncode == 0, (command, done.stdout[-1000:], done.stderr[-1000:])
    assert user in done.stdout  # the deletion's suppression, read back
    admin = {"Authorization": "Bearer admin-secret"}
    listed = httpx.get(f"{url}/admin/users/suppressed", params={"destination": "wk-a"}, headers=admin, timeout=10)
    assert listed.status_code == 200
    assert user in listed.text
    letters = httpx.get(f"{url}/admin/deadletters", headers=admin, timeout=10)
    assert letters.status_code == 200, letters.text
    deletions = lambda: relay.sandbox("/_sandbox/deletions?account_id=ACC-A")["deletions"]  # noqa: E731
    wait_for(lambda: any(user in str(d) for d in deletions()), 30, "CleverTap's delete call for the user", worker)
    assert worker.process.poll() is None, worker.tail()


class Sender(threading.Thread):
    """Posts batches of tracks (20 users, a per-user sequence number), each retried with the same messageIds
    until a 200; remembers what was accepted and when ingest answered 200 again after refusing."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.accepted: list[dict[str, Any]] = []
        self.statuses: dict[str, int] = {}
        self.stopping = threading.Event()
        self.sequence: dict[str, int] = defaultdict(int)

    def batch(self) -> list[dict[str, Any]]:
        messages = []
        for n in range(20):
            user = f"user-{n}"
            self.sequence[user] += 1
            mid = uuid.uuid4().hex
            messages.append(
                {"type": "track", "event": "Cluster", "userId": user, "messageId": mid,
                 "properties": {"mid": mid, "seq": self.sequence[user]}}
            )  # fmt: skip
        return messages

    def run(self) -> None:
        with httpx.Client(timeout=10, auth=(WRITE_KEY, "")) as client:
            while not self.stopping.is_set():
                messages = self.batch()
                while not self.stopping.is_set():
                    try:
                        answer = client.post(f"{self.url}/v1/batch", json={"batch": messages})
                        status = str(answer.status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == "200":
                        self.accepted += messages
                        break
                    time.sleep(0.2)
                time.sleep(0.05)


def in_user_order(records: list[dict[str, Any]]) -> bool:
    """Whether each user's records arrived in the order of their sequence numbers (first copies; a copy sent
    again after the restart may repeat an earlier one)."""
    last: dict[str, int] = {}
    for record in records:
        data = record.get("evtData") or {}
        user, seq = str(record.get("identity")), int(data.get("seq", 0))
        if seq <= last.get(user, 0):
            continue  # a repeat of one already received
        if seq != last.get(user, 0) + 1:
            return False
        last[user] = seq
    return True


def test_a_primary_restarted_under_load_loses_nothing(relay: Relay, cluster: Cluster, redis_url: str) -> None:
    relay.redis_url = cluster.url
    broker = RABBITMQ if rabbitmq_answers() else redis_url
    relay.env_extra.update(CTRELAY_REDIS_CLUSTER="true", CTRELAY_BROKER_URL=broker)
    relay.start_sandbox("--accounts", f"{ACCOUNT}:{PASSCODE}")
    relay.destinations([{"write_key": WRITE_KEY, "account_id": ACCOUNT, "passcode": PASSCODE}])
    _, url = relay.start_ingest()
    worker = relay.start_worker("-n", f"{relay.prefix}@%h")  # its own name: RabbitMQ is shared
    sender = Sender(url)
    sender.start()
    ready = lambda: "worker_ready" in worker.log.read_text(errors="replace")  # noqa: E731
    wait_for(ready, 60, "the worker to be ready (its ticker running)", worker)
    wait_for(lambda: len(sender.accepted) >= 400, 30, "400 messages accepted before the fault", worker)

    victim = cluster.owner(relay.keys.stream(0))
    victim.kill()
    killed_at = time.monotonic()
    time.sleep(3)  # past the cluster's node timeout (2 s): the others mark it failed
    victim.start()  # the same port and nodes.conf: it takes its slots back, with its AOF's data
    restarted_at = time.monotonic()
    cluster.wait_ok()
    accepted_at_restart = list(sender.accepted)
    wanted = {m["messageId"] for m in accepted_at_restart}

    def caught_up() -> bool:
        got = {(item["record"].get("evtData") or {}).get("mid") for item in relay.records()}
        return wanted <= got

    wait_for(caught_up, 60, "what was accepted before the restart to be delivered", worker)
    recovered_s = time.monotonic() - restarted_at
    accepted_before = len(sender.accepted)
    wait_for(lambda: len(sender.accepted) >= accepted_before + 200, 30, "200 more messages after the restart")
    sender.stopping.set()
    sender.join(timeout=15)

    client = cluster_client(cluster)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = reconcile(client, relay, sender.accepted, WRITE_KEY)
            if not state.missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        close(client)
    records = [item["record"] for item in relay.records()]
    print(
        f"\ncluster primary restart: {len(sender.accepted)} accepted, {len(state.delivered)} delivered, "
        f"{len(state.dead)} dead-lettered, {len(state.missing)} missing, {state.duplicates} duplicates; "
        f"primary down {restarted_at - killed_at:.1f} s; everything accepted before the restart delivered "
        f"{recovered_s:.1f} s after it; answers {dict(sorted(sender.statuses.items()))}"
    )
    assert not state.missing, f"{len(state.missing)} accepted messages never delivered"
    assert not state.dead
    assert in_user_order(records)
    assert_spread(cluster, relay)
    assert worker.process.poll() is None, worker.tail()
