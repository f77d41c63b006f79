"""Test helpers for the delivery tiers: an in-process fake CleverTap (httpx.MockTransport) and queue helpers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import redis

from worker.core.destinations import Destination
from worker.core.keys import Envelope, Keys, partition_of
from worker.delivery.batches import Deliverer
from worker.delivery.clevertap import CleverTap
from worker.delivery.drain import Drainer
from worker.delivery.policy import RetryPolicy
from worker.store.deadletters import DeadLetterStore
from worker.store.slots import AccountSlots
from worker.store.streams import ensure_group

Rule = Callable[[list[dict[str, Any]], str], httpx.Response | None]


class FakeCleverTap:
    """Answers uploads like CleverTap; ``rule`` may answer instead (return None to fall through)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []  # (account, record) accepted
        self.requests: list[tuple[str, int]] = []  # (account, records) per request
        self.rule: Rule | None = None
        self.record_codes: Callable[[dict[str, Any]], int | None] = lambda record: None
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        account = request.headers["X-CleverTap-Account-Id"]
        records: list[dict[str, Any]] = orjson.loads(request.content)["d"]
        with self.lock:
            self.requests.append((account, len(records)))
        if self.rule is not None:
            answer = self.rule(records, request.headers["X-CleverTap-Passcode"])
            if answer is not None:
                return answer
        unprocessed = []
        for record in records:
            code = self.record_codes(record)
            if code is None:
                with self.lock:
                    self.received.append((account, record))
            else:
                unprocessed.append({"status": "fail", "code": code, "error": f"code {code}", "record": record})
        status = "success" if not unprocessed else ("fail" if len(unprocessed) == len(records) else "partial")
        body = {"status": status, "processed": len(records) - len(unprocessed), "unprocessed": unprocessed}
        return httpx.Response(200, json=body)


def track(user: str, n: int, event: str = "Clicked", **extra: Any) -> dict[str, Any]:
    message = {
        "type": "track",
        "event": event,
        "userId": user,
        "messageId": uuid.uuid4().hex,
        "timestamp": "2026-11-28T20:00:00Z",
        "properties": {"n": n},
    }
    message.update(extra)
    return message


def enqueue(
    client: redis.Redis, keys: Keys, write_key: str, messages: list[dict[str, Any]], partitions: int = 1
) -> None:
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            user = str(message.get("userId") or message.get("anonymousId") or "")
            pipe.xadd(keys.stream(partition_of(user, partitions)), Envelope(write_key, message).encode())
        pipe.execute()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def build(
    client: redis.Redis,
    keys: Keys,
    destinations: dict[str, Destination],
    fake: FakeCleverTap,
    *,
    policy: RetryPolicy | None = None,
    clock: Callable[[], float] | None = None,
    cap: int = 15,
    reclaim_idle_s: float = 60.0,
    commit_patience_s: float = 1.0,
) -> Drainer:
    http = httpx.Client(transport=httpx.MockTransport(fake.handler))
    deliverer = Deliverer(
        client,
        keys,
        destinations,
        clevertap=CleverTap(http, 5.0),
        slots=AccountSlots(client, keys, cap, slot_ttl_s=10.0),
        deadletters=DeadLetterStore(client, keys),
        policy=policy or RetryPolicy(window_s=100.0, backoff_min_s=1.0, backoff_max_s=10.0, auth_pause_s=30.0),
        **({"clock": clock} if clock is not None else {}),
        commit_patience_s=commit_patience_s,
    )
    ensure_group(client, keys.stream(0))
    return Drainer(deliverer, lease_ttl_s=5.0, budget_s=5.0, reclaim_idle_s=reclaim_idle_s, consumer="test")
