"""End to end (real processes): ``ctrelay ingest`` + ``ctrelay worker`` + a slow ``ctrelay sandbox``; users are
deleted while their events are in flight (one by a ``Delete User`` track through ingest, one by ``ctrelay users
delete``). The sandbox ends with both deletions recorded and no record of either user stored after them; the
other user is untouched; every message of the deleted users is accounted for (delivered before the deletion
and removed by it, or dropped as ``deleted_user``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import redis
from delivery_e2e import Relay, reconcile, wait_for
from prometheus_client.parser import text_string_to_metric_families

from worker.cli.embedded import free_port
from worker.store.deadletters import DeadLetterStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

WK, ACC = "wk-del", "ACC-DEL"
USERS = ("u1", "u2", "u3")


def tracks(phase: int, count: int) -> list[dict[str, Any]]:
    messages = []
    for n in range(count):
        for user in USERS:
            mid = uuid.uuid4().hex
            messages.append(
                {"type": "track", "event": "Clicked", "userId": user, "messageId": mid,
                 "properties": {"mid": mid, "phase": phase, "n": n}}
            )  # fmt: skip
    return messages


def send(url: str, messages: list[dict[str, Any]], per_request: int = 15) -> None:
    for start in range(0, len(messages), per_request):
        answer = httpx.post(
            f"{url}/v1/batch", json={"batch": messages[start : start + per_request]}, auth=(WK, ""), timeout=10
        )
        assert answer.status_code == 200, answer.text


def test_deleting_users_with_events_in_flight(relay: Relay, redis_url: str) -> None:
    relay.start_sandbox("--latency-ms", "300")
    relay.destinations([{"write_key": WK, "account_id": ACC, "passcode": "secret", "allow_delete_events": "true"}])
    _, url = relay.start_ingest()
    metrics_port = free_port()
    worker = relay.start_worker(CTRELAY_METRICS_PORT=str(metrics_port))

    before, after = tracks(1, 30), tracks(2, 20)
    send(url, before)

    def identities() -> list[Any]:
        return [item["record"].get("identity") for item in relay.records()]

    # the deletions come once the users' events are flowing (300 ms per request: more are in flight)
    wait_for(lambda: {"u1", "u3"} <= set(identities()), 60, "the first uploads of u1 and u3", worker)
    deletion = {"type": "track", "event": "Delete User", "userId": "u1", "messageId": uuid.uuid4().hex}
    assert httpx.post(f"{url}/v1/track", json=deletion, auth=(WK, ""), timeout=10).status_code == 200
    cli = relay.ctrelay("users", "delete", "--destination", WK, "--user-id", "u3", timeout_s=60)
    assert cli.returncode == 0, cli.stderr
    send(url, after)

    client = redis.Redis.from_url(redis_url)
    try:
        u2 = [m for m in before + after if m["userId"] == "u2"]

        def settled() -> bool:
            state = reconcile(client, relay, u2, WK)
            deletions = relay.sandbox("/_sandbox/deletions")["deletions"]
            return not state.missing and state.pending == 0 and state.schedule == 0 and len(deletions) == 2

        wait_for(settled, 90, "u2 delivered, both deletions made, nothing pending", worker)
        state = reconcile(client, relay, u2, WK)
        letters = list(DeadLetterStore(client, relay.keys).scan())
    finally:
        client.close()

    deletions = {d["identity"][0]: d for d in relay.sandbox("/_sandbox/deletions")["deletions"]}
    assert set(deletions) == {"u1", "u3"}
    assert all(d["account_id"] == ACC and d["guid"] == [] for d in deletions.values())
    shown = relay.records()
    for user, made in deletions.items():  # nothing of a deleted user stored after its deletion
        assert [item["seq"] for item in shown if item["record"].get("identity") == user] == [], user
        assert made["removed"] >= 1  # its events were being delivered when the deletion came
    # the other user: every event exactly once, in order
    assert len(state.delivered) == len(u2)
    assert state.duplicates == 0
    got = [item["record"]["evtData"]["mid"] for item in shown if item["record"].get("identity") == "u2"]
    assert got == [m["messageId"] for m in u2]
    assert letters == []
    # reconciled: each deleted user's 50 events were delivered (then removed by the deletion) or dropped
    skipped = metric(metrics_port, "ctrelay_messages_skipped_total", destination=ACC, reason="deleted_user")
    removed = sum(d["removed"] for d in deletions.values())
    assert removed + skipped == 2 * 50, (removed, skipped)
    assert skipped >= 2 * 20  # at least every event sent after the deletions were accepted
    delivered = metric(metrics_port, "ctrelay_records_delivered_total", destination=ACC, type="event")
    assert delivered == len(u2) + removed
    assert metric(metrics_port, "ctrelay_records_delivered_total", destination=ACC, type="delete") == 2


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
