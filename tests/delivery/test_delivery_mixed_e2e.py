"""End to end, as a user runs it: segment-analytics-python → ``ctrelay ingest`` → ``ctrelay worker`` → sandbox,
with Celery's broker on the queue's Redis and on RabbitMQ.

A mixed workload for two write keys (two CleverTap accounts): identify (special traits, a push token sent
twice), track (incl. Order Completed → Charged), page, screen, group (skipped), alias. The sandbox must hold
exactly the records the transform gives for each call (computed with the transform), each account only its own,
each user's records in the order the user's calls were made; the token once per objectId.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from delivery_e2e import Proc, Relay, wait_for
from segment.analytics.client import Client

from worker.core.destinations import Destination
from worker.transform.records import transform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ACCOUNTS = {"wk-a": ("ACC-A", "pass-a"), "wk-b": ("ACC-B", "pass-b")}


def workload(prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(client method, keyword arguments) for 6 users, in the order they are called."""
    calls: list[tuple[str, dict[str, Any]]] = []
    android = {"device": {"token": f"{prefix}-token-1", "type": "android"}, "os": {"name": "Android"}}
    for n in range(6):
        user, anon = f"{prefix}-user-{n}", f"{prefix}-anon-{n}"
        traits = {"name": f"User {n}", "email": f"u{n}@example.com", "gender": "female", "planTier": "gold"}
        calls.append(("identify", {"user_id": user, "anonymous_id": anon, "traits": traits, "context": android}))
        calls.append(("track", {"user_id": user, "anonymous_id": anon, "event": "Product Viewed",
                                "properties": {"productId": f"p{n}", "price": 9.5}, "context": android}))  # fmt: skip
        calls.append(("page", {"user_id": user, "category": "Docs", "name": "Intro", "properties": {"path": "/d"}}))
        calls.append(("screen", {"user_id": user, "name": "Home", "properties": {"Tab Name": "feed"}}))
        calls.append(("group", {"user_id": user, "group_id": "g1", "traits": {"plan": "team"}}))
        calls.append(("track", {"user_id": user, "event": "Order Completed",
                                "properties": {"order_id": f"o{n}", "total": "20.5",
                                               "products": [{"sku": "a", "Unit Price": 1}]}}))  # fmt: skip
        if n % 2 == 0:
            calls.append(("alias", {"user_id": user, "previous_id": anon}))
    return calls


_FIELDS = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "previous_id": "previousId",
    "group_id": "groupId",
    "traits": "traits",
    "properties": "properties",
    "event": "event",
    "context": "context",
    "name": "name",
    "category": "category",
}


def expected_records(destination: Destination, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    tokens: set[tuple[str, str]] = set()
    for method, kwargs in calls:
        message = {"type": method, **{_FIELDS[k]: v for k, v in kwargs.items()}}
        result = transform(message, destination, 0.0)
        if not isinstance(result, list):
            continue
        for record in result:
            if record["type"] == "token":
                key = (record["objectId"], record["tokenData"]["id"])
                if key in tokens:
                    continue
                tokens.add(key)
            records.append(without_ts(record))
    return records


def without_ts(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "ts"}


def by_user(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    users: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        users[str(record.get("identity") or record.get("objectId"))].append(record)
    return dict(users)


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, relay: Relay) -> Iterator[str]:
    """Celery's broker: the queue's own Redis (the default), or RabbitMQ (``CTRELAY_BROKER_URL=amqp://...``)."""
    if request.param == "redis":
        yield request.param
        return
    if not rabbitmq_answers():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
    relay.env_extra["CTRELAY_BROKER_URL"] = RABBITMQ
    yield request.param
    relay.stop_all()
    with kombu.Connection(RABBITMQ) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue=relay.keys.celery(), passive=True)  # the drains went through RabbitMQ
        channel.queue_delete(relay.keys.celery())  # the test's queue goes with it


def deliver_mixed_workload(relay: Relay, url: str, worker: Proc) -> dict[str, list[dict[str, Any]]]:
    """Send :func:`workload` of every destination of :data:`ACCOUNTS` through segment-analytics-python to ingest at
    ``url``, wait for the sandbox, and check it holds exactly the transform of the calls, once each, in per-user
    order; the records the sandbox got, per account (also for the cluster e2e)."""
    expected: dict[str, list[dict[str, Any]]] = {}
    for write_key, (account, passcode) in ACCOUNTS.items():
        calls = workload(write_key)
        destination = Destination(write_key=write_key, account_id=account, passcode=passcode)
        expected[account] = expected_records(destination, calls)
        client = Client(write_key=write_key, host=url, max_retries=3, upload_interval=0.05)
        for method, kwargs in calls:
            getattr(client, method)(**kwargs)
        client.flush()
        client.shutdown()
    total = sum(len(records) for records in expected.values())
    assert total == 2 * (6 * 6 + 3)  # per user: profile, token, event, page, screen, Charged; 3 aliases
    wait_for(lambda: len(relay.records()) >= total, 60, f"{total} records at the sandbox", worker)
    time.sleep(1)  # anything extra (a duplicate, a stray token) would arrive by now
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in relay.records():
        got[item["account_id"]].append(without_ts(item["record"]))
    assert set(got) == set(expected)
    for account, records in expected.items():
        assert sorted(map(repr, got[account])) == sorted(map(repr, records)), account  # exactly these, once
        assert by_user(got[account]) == by_user(records), account  # in per-user order
    return got


def test_mixed_workload_two_write_keys_two_accounts(relay: Relay, broker: str) -> None:
    relay.start_sandbox("--accounts", ",".join(f"{acc}:{pw}" for acc, pw in ACCOUNTS.values()))
    relay.destinations([{"write_key": wk, "account_id": acc, "passcode": pw} for wk, (acc, pw) in ACCOUNTS.items()])
    _, url = relay.start_ingest()
    worker = relay.start_worker()
    got = deliver_mixed_workload(relay, url, worker)
    kinds = sorted(record["type"] for records in got.values() for record in records)
    assert kinds.count("token") == 2 * 6  # one per objectId, though sent with two calls each
