"""The chaos test's client: a steady, seeded, mixed stream of Segment calls for one write key, over HTTP.

It speaks to ``ctrelay ingest`` with httpx rather than through segment-analytics-python because the
reconciliation needs to know exactly which messageIds ingest *accepted* (answered 200), and the client
library hides that (it retries, drops and batches on its own). It behaves like the library: batches
(``/v1/batch``) and single calls (``/v1/track`` ...), each retried with the same messageIds on a 503,
a 5xx or a network error, with backoff, until a 200 or its deadline.

Every message carries its messageId in ``properties``/``traits`` (``mid``) so that its record can be found
at the sandbox; an alias carries it in its ``previousId`` (``prev-<mid>``, the record's objectId).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx

KINDS = {  # kind: weight
    "identify": 14,
    "track": 30,
    "order": 10,
    "page": 10,
    "screen": 10,
    "group": 10,
    "alias": 8,
    "bad_event": 5,  # the sandbox answers every "Bad Event" record with code 528 (permanent)
    "poison": 3,  # a request holding a "Poison Pill" event is a 400 as a whole (the relay must split it)
}
BAD_EVENT, BAD_CODE, POISON = "Bad Event", 528, "Poison Pill"
SANDBOX_FLAGS = ["--event-code", f"{BAD_EVENT}={BAD_CODE}", "--poison-event", POISON]
USERS = 300


def message(rng: random.Random, write_key: str, n: int) -> tuple[str, dict[str, Any]]:
    """(kind, message): one call of the mix, with its own messageId."""
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    mid = f"{write_key}-{n}-{rng.getrandbits(32):08x}"
    user = f"{write_key}-u{rng.randrange(USERS)}"
    base: dict[str, Any] = {"messageId": mid, "userId": user, "timestamp": datetime.now(UTC).isoformat()}
    if kind == "identify":
        traits = {"mid": mid, "name": f"User {n}", "email": f"u{n}@example.com", "planTier": "gold", "n": n}
        body = {"type": "identify", "anonymousId": f"anon-{user}", "traits": traits}
    elif kind in ("track", "bad_event", "poison"):
        event = {"track": "Product Viewed", "bad_event": BAD_EVENT, "poison": POISON}[kind]
        body = {"type": "track", "event": event, "properties": {"mid": mid, "price": 9.5, "productId": f"p{n}"}}
    elif kind == "order":
        props = {"mid": mid, "order_id": f"o-{mid}", "total": "20.50", "products": [{"sku": "a", "Unit Price": 1}]}
        body = {"type": "track", "event": "Order Completed", "properties": props}
    elif kind == "page":
        body = {"type": "page", "name": "Home", "category": "Docs", "properties": {"mid": mid, "path": "/"}}
    elif kind == "screen":
        body = {"type": "screen", "name": "Feed", "properties": {"mid": mid, "Tab Name": "top"}}
    elif kind == "group":
        body = {"type": "group", "groupId": "g1", "traits": {"mid": mid, "plan": "team"}}
    else:
        body = {"type": "alias", "previousId": f"prev-{mid}"}
    return kind, base | body


def record_mid(record: dict[str, Any]) -> str | None:
    """The messageId a sandbox record was made from (None for records of no message of this stream)."""
    data = record.get("evtData") or record.get("profileData") or {}
    mid = data.get("mid")
    if mid is None and str(record.get("objectId", "")).startswith("prev-"):
        return str(record["objectId"])[5:]
    return None if mid is None else str(mid)


class Sender(threading.Thread):
    """Sends ``rate`` messages/s for one write key until stopped; remembers what ingest accepted."""

    def __init__(
        self, url: str, write_key: str, rate: float, seed: int, *, singles_share: float = 0.25, give_up_s: float = 60
    ) -> None:
        super().__init__(name=f"sender-{write_key}", daemon=True)
        self.url = url
        self.write_key = write_key
        self.rate = rate
        self.rng = random.Random(seed)
        self.singles_share = singles_share
        self.give_up_s = give_up_s
        self.stopping = threading.Event()
        self.accepted: dict[str, tuple[str, dict[str, Any]]] = {}  # messageId → (kind, message)
        self.given_up: dict[str, tuple[str, dict[str, Any]]] = {}
        self.accepted_at: dict[str, float] = {}  # messageId → time.monotonic() of the 200
        self.sent = 0
        self.requests = 0
        self.answers: Counter[str] = Counter()  # HTTP status (or error name) of every attempt
        self.retried_requests = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        started, n = time.monotonic(), 0
        with httpx.Client(base_url=self.url, auth=(self.write_key, ""), timeout=10) as client:
            while not self.stopping.is_set():
                due = min(int((time.monotonic() - started) * self.rate) - n, 200)
                if due <= 0:
                    self.stopping.wait(0.02)
                    continue
                calls = [message(self.rng, self.write_key, n + i) for i in range(due)]
                n += due
                self.sent += due
                if self.rng.random() < self.singles_share:
                    for kind, body in calls:
                        single = {k: v for k, v in body.items() if k != "type"}
                        self._post(client, f"/v1/{body['type']}", single, [(kind, body)])
                else:
                    self._post(client, "/v1/batch", {"batch": [body for _, body in calls]}, calls)

    def _post(self, client: httpx.Client, path: str, body: Any, calls: list[tuple[str, dict[str, Any]]]) -> None:
        deadline, attempt = time.monotonic() + self.give_up_s, 0
        self.requests += 1
        while True:
            try:
                status = client.post(path, json=body).status_code
                self.answers[str(status)] += 1
            except httpx.HTTPError as exc:
                status = 0
                self.answers[type(exc).__name__] += 1
            if status == 200:
                self.accepted.update((m["messageId"], (kind, m)) for kind, m in calls)
                now = time.monotonic()
                self.accepted_at.update((m["messageId"], now) for _, m in calls)
                return
            if (400 <= status < 500 and status != 429) or time.monotonic() > deadline:
                self.given_up.update((m["messageId"], (kind, m)) for kind, m in calls)
                return
            if attempt == 0:
                self.retried_requests += 1
            attempt += 1
            time.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
